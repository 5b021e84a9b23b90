package fault

import (
	"errors"
	"fmt"
	"testing"
)

var errNotFound = errors.New("not found")

func TestValidationErrorCollects(t *testing.T) {
	v := &ValidationError{}
	if err := v.Err(); err != nil {
		t.Fatalf("empty validator: got %v, want nil", err)
	}
	v.Add("token", "must be hex, got %q", "zz")
	v.Add("app_id", "required")
	err := v.Err()
	if err == nil {
		t.Fatal("got nil, want an error")
	}
	want := `invalid argument: token: must be hex, got "zz"; app_id: required`
	if got := err.Error(); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	var ve *ValidationError
	if !errors.As(fmt.Errorf("wrapped: %w", err), &ve) || len(ve.Violations) != 2 {
		t.Errorf("errors.As through wrapping: got %v, want 2 violations", ve)
	}
}

func TestOnFieldKeepsSentinel(t *testing.T) {
	err := fmt.Errorf("lookup: %w", OnField(errNotFound, "profile.profile_id", "profile %q not found", "p1"))
	if !errors.Is(err, errNotFound) {
		t.Errorf("errors.Is(err, errNotFound) = false, want true")
	}
	field, ok := FieldOf(err)
	if !ok || field != "profile.profile_id" {
		t.Errorf("FieldOf: got %q %v, want profile.profile_id true", field, ok)
	}
	if got, want := err.Error(), `lookup: profile "p1" not found`; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

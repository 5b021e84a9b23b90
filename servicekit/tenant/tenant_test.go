package tenant

import (
	"context"
	"strings"
	"testing"
)

func TestFromContextDefaults(t *testing.T) {
	if got := FromContext(context.Background()); got != Default {
		t.Errorf("got %q, want %q", got, Default)
	}
	if got := FromContext(With(context.Background(), "acme")); got != "acme" {
		t.Errorf("got %q, want acme", got)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{"default", true},
		{"acme-eu_1", true},
		{"0acme", true},
		{"", false},
		{"-acme", false},
		{"Acme", false},
		{"ac/me", false},
		{"ac\x00me", false},
		{strings.Repeat("a", MaxLen), true},
		{strings.Repeat("a", MaxLen+1), false},
	}
	for _, tt := range tests {
		err := Validate(tt.id)
		if got := err == nil; got != tt.want {
			t.Errorf("Validate(%q) = %v, want valid=%v", tt.id, err, tt.want)
		}
	}
}

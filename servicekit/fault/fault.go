// Package fault defines the errors domain packages return, without knowing
// anything of gRPC. Each service maps its own sentinel errors to status codes
// in one place (see grpcserver.Status); validation errors always carry the
// fields at fault so callers learn exactly what to fix.
package fault

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// FieldViolation names one invalid field and says why it is invalid.
// Field uses the request's field path, e.g. "profile.identity.namespace" or
// "rows[3].token".
type FieldViolation struct {
	Field       string
	Description string
}

// ValidationError is a request that cannot be served as given. It maps to
// InvalidArgument with a BadRequest detail listing every violation.
type ValidationError struct {
	Violations []FieldViolation
}

// Error joins the violations into one line.
func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Violations))
	for i, v := range e.Violations {
		parts[i] = v.Field + ": " + v.Description
	}
	return "invalid argument: " + strings.Join(parts, "; ")
}

// Add records one violation.
func (e *ValidationError) Add(field, format string, args ...any) {
	e.Violations = append(e.Violations, FieldViolation{Field: field, Description: fmt.Sprintf(format, args...)})
}

// Err returns e when it holds a violation and nil otherwise, so a validator
// can collect everything and end with `return v.Err()`.
func (e *ValidationError) Err() error {
	if e == nil || len(e.Violations) == 0 {
		return nil
	}
	return e
}

// Invalid returns a ValidationError with one violation.
func Invalid(field, format string, args ...any) error {
	v := &ValidationError{}
	v.Add(field, format, args...)
	return v
}

// FieldError wraps a domain error (usually a sentinel such as ErrNotFound)
// with the request field it concerns, so the status can name that field.
type FieldError struct {
	Err   error
	Field string
	Msg   string
}

// Error returns the message, or the wrapped error's text.
func (e *FieldError) Error() string {
	if e.Msg != "" {
		return e.Msg
	}
	return e.Field + ": " + e.Err.Error()
}

// Unwrap exposes the wrapped sentinel to errors.Is.
func (e *FieldError) Unwrap() error { return e.Err }

// OnField wraps err (a sentinel) with the field it concerns and a message,
// e.g. fault.OnField(ErrNotFound, "profile.profile_id", "profile %q not found", id).
func OnField(err error, field, format string, args ...any) error {
	return &FieldError{Err: err, Field: field, Msg: fmt.Sprintf(format, args...)}
}

// FieldOf returns the field an error concerns, if any.
func FieldOf(err error) (string, bool) {
	var fe *FieldError
	if errors.As(err, &fe) {
		return fe.Field, true
	}
	return "", false
}

// RetryAfterError says the caller may retry after a delay (rate limits,
// quotas). It maps to ResourceExhausted with a RetryInfo detail unless the
// service maps the wrapped error otherwise.
type RetryAfterError struct {
	Err   error
	After time.Duration
}

// Error returns the wrapped error's text.
func (e *RetryAfterError) Error() string {
	return fmt.Sprintf("%v (retry after %s)", e.Err, e.After)
}

// Unwrap exposes the wrapped error.
func (e *RetryAfterError) Unwrap() error { return e.Err }

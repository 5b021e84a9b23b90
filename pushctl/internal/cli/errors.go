package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pushmesh/pushmesh/pushctl/internal/render"
)

// Exit codes. They are part of pushctl's interface: scripts depend on them,
// so existing values never change meaning.
const (
	ExitOK          = 0
	ExitFailed      = 1
	ExitUsage       = 2
	ExitUnavailable = 3
	ExitNotFound    = 4
	ExitInvalid     = 5
	ExitConflict    = 6
	ExitInterrupted = 130
)

var exitCodes = []struct {
	code    int
	meaning string
}{
	{ExitOK, "success"},
	{ExitFailed, "a call failed, or partly failed: rejected import rows, a journey that ended failed or cancelled, invalid app credentials"},
	{ExitUsage, "usage error: unknown command, bad flag, unreadable or invalid input file"},
	{ExitUnavailable, "cannot reach a service, or it cannot reach another service or a gateway (Unavailable)"},
	{ExitNotFound, "not found (NotFound)"},
	{ExitInvalid, "the service rejected the request as invalid (InvalidArgument, OutOfRange)"},
	{ExitConflict, "conflict with the current state (AlreadyExists, FailedPrecondition, Aborted)"},
	{ExitInterrupted, "interrupted (Ctrl-C)"},
}

// usageError is a mistake on the command line or in an input file.
type usageError struct {
	cmd *Command
	msg string
}

func (e *usageError) Error() string { return e.msg }

func usagef(cmd *Command, format string, args ...any) error {
	return &usageError{cmd: cmd, msg: fmt.Sprintf(format, args...)}
}

// exitError ends pushctl with a code after the command has already said
// why (e.g. a summary with rejected rows); msg, if any, is printed.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string {
	if e.msg == "" {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.msg
}

// rpcError is a failed call to a service.
type rpcError struct {
	service string
	addr    string
	timeout time.Duration
	// tls is whether pushctl dialed with --tls-* flags.
	tls bool
	err error
}

func (e *rpcError) Error() string { return e.service + ": " + e.err.Error() }
func (e *rpcError) Unwrap() error { return e.err }

// ExitCode is the process exit code for the error Run returned.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ue *usageError
	var ee *exitError
	var re *rpcError
	switch {
	case errors.As(err, &ue):
		return ExitUsage
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &re):
		return codeExit(status.Code(re.err))
	case errors.Is(err, context.Canceled):
		return ExitInterrupted
	}
	return ExitFailed
}

func codeExit(c codes.Code) int {
	switch c {
	case codes.OK:
		return ExitOK
	case codes.Unavailable:
		return ExitUnavailable
	case codes.NotFound:
		return ExitNotFound
	case codes.InvalidArgument, codes.OutOfRange:
		return ExitInvalid
	case codes.AlreadyExists, codes.FailedPrecondition, codes.Aborted:
		return ExitConflict
	case codes.Canceled:
		return ExitInterrupted
	}
	return ExitFailed
}

// Report prints err for a person on w and returns the exit code.
func Report(err error, w io.Writer) int {
	if err == nil {
		return ExitOK
	}
	io.WriteString(w, Describe(err))
	return ExitCode(err)
}

// Describe is the message Report prints: what failed, every detail the
// service attached (field violations, preconditions, when to retry) and
// what to do about it.
func Describe(err error) string {
	var b strings.Builder
	var ue *usageError
	var ee *exitError
	var re *rpcError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintf(&b, "pushctl: %s\n", ue.msg)
		if ue.cmd != nil {
			fmt.Fprintf(&b, "Run 'pushctl help%s' for usage.\n", strings.TrimPrefix(ue.cmd.path(), "pushctl"))
		}
	case errors.As(err, &ee):
		if ee.msg != "" {
			fmt.Fprintf(&b, "pushctl: %s\n", ee.msg)
		}
	case errors.As(err, &re):
		describeRPC(&b, re)
	case errors.Is(err, context.Canceled):
		b.WriteString("pushctl: interrupted\n")
	default:
		fmt.Fprintf(&b, "pushctl: %v\n", err)
	}
	return b.String()
}

func describeRPC(b *strings.Builder, re *rpcError) {
	st, _ := status.FromError(re.err)
	switch st.Code() {
	case codes.Unavailable:
		if answeredByServer(re.err) {
			// The service is up; what it depends on is not (another
			// service, a gateway): its message says which.
			break
		}
		advice := tlsAdvice(st.Message(), re.tls)
		if advice == "" {
			advice = "is it running? (`pushctl dev` starts everything)"
		}
		fmt.Fprintf(b, "pushctl: cannot reach %s at %s: %s\n", re.service, re.addr, advice)
		fmt.Fprintf(b, "  cause: %s\n", st.Message())
		return
	case codes.DeadlineExceeded:
		if re.timeout > 0 {
			fmt.Fprintf(b, "pushctl: %s did not answer within %s; raise --timeout if the request is big\n", re.service, re.timeout)
			return
		}
	case codes.Canceled:
		b.WriteString("pushctl: interrupted\n")
		return
	}
	// Say the code once: fault.ValidationError messages already start with it.
	words, msg := codeWords(st.Code()), st.Message()
	if strings.HasPrefix(strings.ToLower(msg), words+":") {
		fmt.Fprintf(b, "pushctl: %s: %s\n", re.service, msg)
	} else {
		fmt.Fprintf(b, "pushctl: %s: %s: %s\n", re.service, words, msg)
	}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				fmt.Fprintf(b, "  field %s: %s\n", v.GetField(), v.GetDescription())
			}
		case *errdetails.PreconditionFailure:
			for _, v := range d.GetViolations() {
				fmt.Fprintf(b, "  precondition %s", v.GetType())
				if v.GetSubject() != "" {
					fmt.Fprintf(b, " %s", v.GetSubject())
				}
				fmt.Fprintf(b, ": %s\n", v.GetDescription())
			}
		case *errdetails.RetryInfo:
			fmt.Fprintf(b, "  retry after %s\n", render.Duration(d.GetRetryDelay().AsDuration()))
		case *errdetails.QuotaFailure:
			for _, v := range d.GetViolations() {
				fmt.Fprintf(b, "  quota %s: %s\n", v.GetSubject(), v.GetDescription())
			}
		case *errdetails.ErrorInfo:
			fmt.Fprintf(b, "  reason %s", d.GetReason())
			if d.GetDomain() != "" {
				fmt.Fprintf(b, " (%s)", d.GetDomain())
			}
			b.WriteString("\n")
		case *errdetails.ResourceInfo:
			fmt.Fprintf(b, "  resource %s %s", d.GetResourceType(), d.GetResourceName())
			if d.GetDescription() != "" {
				fmt.Fprintf(b, ": %s", d.GetDescription())
			}
			b.WriteString("\n")
		case *errdetails.Help:
			for _, l := range d.GetLinks() {
				fmt.Fprintf(b, "  see %s: %s\n", l.GetDescription(), l.GetUrl())
			}
		case *errdetails.LocalizedMessage:
			fmt.Fprintf(b, "  %s\n", d.GetMessage())
		}
	}
}

// tlsAdvice says what to do about a connection that failed over a TLS
// mismatch, from the message gRPC gives (its wording comes from grpc-go,
// crypto/tls and servicekit/tlsconfig); "" when the failure is not about
// TLS.
func tlsAdvice(msg string, usingTLS bool) string {
	has := func(s string) bool { return strings.Contains(msg, s) }
	switch {
	case !usingTLS && has("server preface"):
		// A TLS server hangs up on the plaintext HTTP/2 preface.
		return "it may serve TLS: give --tls-ca (and --tls-cert, --tls-key if it requires client certificates)"
	case !usingTLS:
		return ""
	case has("first record does not look like a TLS handshake"):
		return "it serves plaintext, not TLS: drop --tls-ca, --tls-cert and --tls-key (or unset PUSHCTL_TLS_*)"
	case has("requires a client certificate"):
		return "it requires a client certificate (mutual TLS): give --tls-cert and --tls-key"
	case has("does not accept the client certificate"), has("remote error: tls: bad certificate"), has("remote error: tls: unknown certificate authority"):
		return "it refuses the client certificate of --tls-cert: use one signed by a CA of its --tls-client-ca"
	case has("certificate signed by unknown authority"):
		return "its certificate is not signed by a CA of --tls-ca"
	case has("certificate is valid for"), has("certificate is not valid for any names"), has("doesn't contain any IP SANs"):
		return "its certificate does not name the host of the address: connect by a name it lists, or give --tls-server-name"
	case has("certificate has expired or is not yet valid"):
		return "its certificate has expired or is not valid yet (check both clocks)"
	case has("authentication handshake failed"), has("remote error: tls:"):
		return "the TLS handshake failed"
	}
	return ""
}

// codeWords turns codes.InvalidArgument into "invalid argument".
func codeWords(c codes.Code) string {
	var b strings.Builder
	for i, r := range c.String() {
		if unicode.IsUpper(r) && i > 0 {
			b.WriteByte(' ')
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

// Package audience selects the profiles a journey targets: it compiles a CEL
// condition once and streams, in profile id order and in constant memory,
// every profile that meets it with the tokens it can be reached on.
package audience

import (
	"fmt"
	"slices"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/ext"
	"cel.dev/cel-go/interpreter"

	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
	"github.com/pushmesh/pushmesh/servicekit/fault"
)

// MaxConditionLen bounds a condition's source.
const MaxConditionLen = 8 << 10

// The variables a condition sees.
const (
	varAttributes = "attributes" // map(string, dyn): the profile's attributes
	varIdentities = "identities" // map(string, list(string)): namespace → values
	varConsent    = "consent"    // string: "opted_in", "opted_out" or "unspecified"
	varPlatforms  = "platforms"  // list(string): "apns", "fcm" of the active tokens
	varApps       = "apps"       // list(string): app ids of the active tokens
	varProfileID  = "profile_id" // string
)

// env is built once: NewEnv is expensive and an Env is safe to share.
var env = func() *cel.Env {
	e, err := cel.NewEnv(
		cel.Variable(varAttributes, cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable(varIdentities, cel.MapType(cel.StringType, cel.ListType(cel.StringType))),
		cel.Variable(varConsent, cel.StringType),
		cel.Variable(varPlatforms, cel.ListType(cel.StringType)),
		cel.Variable(varApps, cel.ListType(cel.StringType)),
		cel.Variable(varProfileID, cel.StringType),
		ext.Strings(),
		cel.OptionalTypes(),
	)
	if err != nil {
		panic(fmt.Sprintf("audience: build CEL environment: %v", err))
	}
	return e
}()

// Condition is a compiled audience condition; safe for concurrent use.
type Condition struct {
	source string
	prg    cel.Program // nil: the empty condition, every profile qualifies
}

// Compile compiles a condition. An empty condition selects every profile.
// Errors are InvalidArgument on field "condition" carrying CEL's message.
func Compile(source string) (*Condition, error) {
	if source == "" {
		return &Condition{}, nil
	}
	if len(source) > MaxConditionLen {
		return nil, fault.Invalid("condition", "is %d bytes, more than %d", len(source), MaxConditionLen)
	}
	ast, iss := env.Compile(source)
	if iss.Err() != nil {
		return nil, fault.Invalid("condition", "does not compile: %v", iss.Err())
	}
	if t := ast.OutputType(); !t.IsExactType(types.BoolType) && !t.IsExactType(types.DynType) {
		return nil, fault.Invalid("condition", "must be a boolean expression, got %s", t)
	}
	prg, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, fault.Invalid("condition", "cannot be evaluated: %v", err)
	}
	return &Condition{source: source, prg: prg}, nil
}

// String returns the condition's source.
func (c *Condition) String() string { return c.source }

// match evaluates the condition against the profile behind act. A profile
// on which the condition fails at run time (e.g. it reads an attribute the
// profile does not have) does not qualify.
func (c *Condition) match(act *activation) bool {
	if c.prg == nil {
		return true
	}
	out, _, err := c.prg.Eval(act)
	if err != nil {
		return false
	}
	b, ok := out.(types.Bool)
	return ok && bool(b)
}

// activation hands one profile to CEL, decoding each variable only when the
// condition reads it, so a condition on consent never decodes attributes.
type activation struct {
	id   profile.ID
	view *profile.View
	err  error // the first decoding error; the scan fails with it

	attrs     map[string]any
	attrsDone bool
	attrMap   attrMap

	tokensDone bool
	platforms  []string
	apps       []string

	// interned app ids: a scan sees few distinct apps, so this avoids one
	// string allocation per token.
	interned map[string]string
}

// maxInterned bounds the interned app ids of one scan.
const maxInterned = 1024

func newActivation() *activation { return &activation{interned: map[string]string{}} }

func (a *activation) reset(id profile.ID, v *profile.View) {
	a.id, a.view, a.err = id, v, nil
	a.attrs, a.attrsDone = nil, false
	a.tokensDone = false
	a.platforms, a.apps = a.platforms[:0], a.apps[:0]
}

// ResolveName implements interpreter.Activation.
func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case varAttributes:
		a.attrMap = attrMap{act: a}
		return &a.attrMap, true
	case varIdentities:
		ids, err := a.view.Identities()
		if err != nil {
			a.fail(err)
		}
		m := make(map[string]any, len(ids))
		for _, idn := range ids {
			l, _ := m[idn.Namespace].([]string)
			m[idn.Namespace] = append(l, idn.Value)
		}
		return m, true
	case varConsent:
		return types.String(a.view.Consent.String()), true
	case varPlatforms:
		a.activeTokens()
		return a.platforms, true
	case varApps:
		a.activeTokens()
		return a.apps, true
	case varProfileID:
		return types.String(a.id.String()), true
	}
	return nil, false
}

// Parent implements interpreter.Activation.
func (a *activation) Parent() interpreter.Activation { return nil }

func (a *activation) fail(err error) {
	if a.err == nil {
		a.err = fmt.Errorf("profile %s: %w", a.id, err)
	}
}

func (a *activation) attributes() map[string]any {
	if !a.attrsDone {
		a.attrsDone = true
		m, err := a.view.Attributes()
		if err != nil {
			a.fail(err)
		}
		a.attrs = m
	}
	return a.attrs
}

// activeTokens fills the distinct platforms and apps of the active tokens.
func (a *activation) activeTokens() {
	if a.tokensDone {
		return
	}
	a.tokensDone = true
	err := a.view.EachTokenHead(func(h *profile.TokenHead) bool {
		if !h.Active {
			return true
		}
		if p := h.Platform.String(); !slices.Contains(a.platforms, p) {
			a.platforms = append(a.platforms, p)
		}
		app, ok := a.interned[string(h.AppID)]
		if !ok {
			app = string(h.AppID)
			if len(a.interned) < maxInterned {
				a.interned[app] = app
			}
		}
		if !slices.Contains(a.apps, app) {
			a.apps = append(a.apps, app)
		}
		return true
	})
	if err != nil {
		a.fail(err)
	}
}

// Package audience selects the profiles a journey targets: it compiles a CEL
// condition once and streams, in profile id order and in constant memory,
// every profile that meets it with the tokens it can be reached on.
package audience

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/ext"
	"cel.dev/cel-go/interpreter"

	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
	"github.com/pushmesh/pushmesh/servicekit/fault"
)

// MaxConditionLen bounds a condition's source.
const MaxConditionLen = 8 << 10

// MaxConditionCost bounds what evaluating a condition on one profile may
// cost, in CEL's cost units (about one per comparison, call or
// comprehension step; string scans cost a tenth of a unit per byte). A
// unit took 10 to 65 ns (the most for regular expressions, and for counted
// evaluation), so one evaluation stays under about 70 ms: a scan notices a
// cancelled query between two profiles, and no condition makes a query run
// for hours. Kubernetes uses the same per-expression limit.
const MaxConditionCost = 1_000_000

// assumedSize is what the cost estimate assumes where no limit bounds a
// size: the number of attributes, of elements of an attribute's list or
// map value, of identity namespaces, of identities in one namespace, and
// of apps. Profiles that exceed it are still evaluated, under a runtime
// cost limit.
const assumedSize = 1000

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
	// tracked says prg counts its cost and stops at MaxConditionCost: the
	// condition's cost depends on sizes nothing bounds (see sizeHints).
	tracked bool
}

// Compile compiles a condition. An empty condition selects every profile.
// Errors are InvalidArgument on field "condition" carrying CEL's message,
// or saying that the condition may cost too much to evaluate.
//
// Cost: CEL estimates a condition's worst-case cost on one profile from
// the sizes its variables can have. When the service's limits bound every
// size the condition's cost depends on (one attribute's value, platforms,
// the consent, ...) and that estimate is within MaxConditionCost, it is a
// true bound and evaluation runs untracked, as fast as without a limit:
// most conditions, e.g. `attributes.tier == "gold"`. Otherwise the
// estimate is redone assuming assumedSize where no limit bounds a size
// (e.g. `identities.email.exists(...)`); a condition over the limit even
// then does not compile, one within it is evaluated counting its cost,
// and a profile on which it exceeds MaxConditionCost fails the query.
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
	tracked := false
	est, err := env.EstimateCost(ast, sizeHints{})
	if err == nil && est.Max > MaxConditionCost {
		tracked = true
		est, err = env.EstimateCost(ast, sizeHints{assume: true})
	}
	if err != nil {
		return nil, fault.Invalid("condition", "cannot be costed: %v", err)
	}
	if est.Max > MaxConditionCost {
		return nil, fault.Invalid("condition", "may cost %s to evaluate on one profile, more than the limit of %d, "+
			"even assuming at most %d attributes, elements in an attribute's list or map, identities and apps "+
			"(nested comprehensions multiply sizes); simplify it",
			costString(est.Max), MaxConditionCost, assumedSize)
	}
	opts := []cel.ProgramOption{cel.EvalOptions(cel.OptOptimize)}
	if tracked {
		opts = append(opts, cel.CostLimit(MaxConditionCost))
	}
	prg, err := env.Program(ast, opts...)
	if err != nil {
		return nil, fault.Invalid("condition", "cannot be evaluated: %v", err)
	}
	return &Condition{source: source, prg: prg, tracked: tracked}, nil
}

func costString(c uint64) string {
	if c == math.MaxUint64 {
		return "an unbounded amount"
	}
	return fmt.Sprint(c)
}

// sizeHints tells CEL's cost estimator how big the variables can be. With
// assume unset it only answers sizes the service's limits guarantee, so an
// estimate it makes finite is a true bound; with assume set, it answers
// assumedSize for the sizes no limit bounds, and for attribute values.
type sizeHints struct{ assume bool }

// EstimateSize implements cost.Estimator. Path is a variable then, for
// its parts, a field name or "@items", "@keys", "@values".
func (h sizeHints) EstimateSize(n cost.AstNode) *cost.SizeEstimate {
	path := n.Path()
	if len(path) == 0 {
		return nil
	}
	size := func(max uint64) *cost.SizeEstimate {
		return &cost.SizeEstimate{Min: 0, Max: max}
	}
	assumed := func(max uint64) *cost.SizeEstimate {
		if !h.assume {
			return nil
		}
		return size(max)
	}
	switch path[0] {
	case varConsent:
		return size(uint64(len("unspecified")))
	case varProfileID:
		return size(profile.IDLen)
	case varPlatforms:
		if len(path) == 1 {
			return size(2) // distinct platforms
		}
		return size(uint64(len("unspecified")))
	case varApps:
		if len(path) == 1 {
			return assumed(assumedSize)
		}
		return size(profile.MaxAppIDLen)
	case varIdentities:
		switch {
		case len(path) == 1:
			return assumed(assumedSize)
		case path[1] == "@keys":
			return size(profile.MaxNamespaceLen)
		case len(path) == 2:
			return assumed(assumedSize)
		}
		return size(profile.MaxIdentityLen)
	case varAttributes:
		switch {
		case len(path) == 1:
			return assumed(assumedSize)
		case len(path) == 2 && path[1] == "@keys":
			return size(profile.MaxAttributeKeyLen)
		case h.assume:
			return size(assumedSize)
		}
		// One attribute's value, or a part of it: one request sets a
		// value whole, so its encoding is at most MaxAttributesBytes, with
		// at least one byte per byte of string and per element.
		return size(profile.MaxAttributesBytes)
	}
	return nil
}

// EstimateCallCost implements cost.Estimator: the standard costs.
func (sizeHints) EstimateCallCost(function, overloadID string, target *cost.AstNode, args []cost.AstNode) *cost.CallEstimate {
	return nil
}

// String returns the condition's source.
func (c *Condition) String() string { return c.source }

// match evaluates the condition against the profile behind act. A profile
// on which the condition fails at run time (e.g. it reads an attribute the
// profile does not have) does not qualify. A condition that costs more
// than MaxConditionCost on the profile fails the scan (act.err).
func (c *Condition) match(act *activation) bool {
	if c.prg == nil {
		return true
	}
	out, _, err := c.prg.Eval(act)
	if err != nil {
		if c.tracked && act.err == nil {
			c.checkCost(act, err)
		}
		return false
	}
	b, ok := out.(types.Bool)
	return ok && bool(b)
}

// checkCost sets act.err when err says the evaluation hit the cost limit.
func (c *Condition) checkCost(act *activation, err error) {
	var ce interpreter.EvalCancelledError
	if errors.As(err, &ce) && ce.Cause == interpreter.CostLimitExceeded {
		act.err = fault.Invalid("condition", "costs more than the limit of %d to evaluate on profile %s, "+
			"whose attributes, identities or apps are bigger than the %d the cost estimate assumed; simplify it",
			MaxConditionCost, act.id, assumedSize)
	}
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

	// identities, built once per profile: a condition may read it in a
	// loop.
	identities map[string]any

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
	a.identities = nil
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
		if a.identities == nil {
			ids, err := a.view.Identities()
			if err != nil {
				a.fail(err)
			}
			a.identities = make(map[string]any, len(ids))
			for _, idn := range ids {
				l, _ := a.identities[idn.Namespace].([]string)
				a.identities[idn.Namespace] = append(l, idn.Value)
			}
		}
		return a.identities, true
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

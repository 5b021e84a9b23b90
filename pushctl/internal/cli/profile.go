package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"sort"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/pushctl/internal/csvimport"
	"github.com/pushmesh/pushmesh/pushctl/internal/enums"
	"github.com/pushmesh/pushmesh/pushctl/internal/render"
)

func profileCommand() *Command {
	return &Command{
		Name:    "profile",
		Summary: "show, create, update and delete customer profiles and list their tokens",
		Sub: []*Command{
			profileGetCommand(),
			profileTokensCommand(),
			profileUpsertCommand(),
			profileDeleteCommand(),
		},
	}
}

// refFlags are --id and --identity naming one profile.
type refFlags struct {
	id, identity string
}

func (r *refFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&r.id, "id", "", "the profile id")
	fs.StringVar(&r.identity, "identity", "", "any identity of the profile, `namespace=value` (e.g. customer_id=C-1042)")
}

func profileGetCommand() *Command {
	var ref refFlags
	cmd := &Command{
		Name:    "get",
		Args:    "(--id ID | --identity namespace=value)",
		Summary: "show a profile: identities, attributes, consent",
		Flags:   ref.register,
	}
	cmd.Run = func(ctx context.Context, e *Env, args []string) error {
		r, err := profileRef(cmd, "id", ref.id, ref.identity)
		if err != nil {
			return err
		}
		profiles, err := e.Profiles()
		if err != nil {
			return err
		}
		resp, err := unary(ctx, e, profileSvc, profiles.GetProfile, &profilev1.GetProfileRequest{Profile: r})
		if err != nil {
			return err
		}
		if e.Global.JSON {
			return e.printJSON(resp)
		}
		e.print(profileDetails(resp.GetProfile()))
		return nil
	}
	return cmd
}

// profileDetails renders one profile: its fields, then its attributes.
func profileDetails(p *profilev1.Profile) string {
	var kv render.KeyValues
	kv.Add("profile", p.GetProfileId())
	var ids []string
	for _, id := range p.GetIdentities() {
		ids = append(ids, id.GetNamespace()+"="+id.GetValue())
	}
	kv.Add("identities", render.Text(strings.Join(ids, ", ")))
	consent := enums.Label(p.GetConsent().GetState())
	if consent == "-" {
		consent = "not recorded"
	}
	if t := p.GetConsent().GetUpdateTime(); t != nil {
		consent += " (" + render.Time(t) + ")"
	}
	kv.Add("push consent", consent)
	kv.Add("active tokens", render.Count(int64(p.GetActiveTokenCount())))
	kv.Add("created", render.Time(p.GetCreateTime()))
	kv.Add("updated", render.Time(p.GetUpdateTime()))
	var b strings.Builder
	b.WriteString(kv.String())
	fields := p.GetAttributes().GetFields()
	if len(fields) == 0 {
		b.WriteString("\nno attributes\n")
		return b.String()
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b.WriteString("\n")
	t := render.NewTable("ATTRIBUTE", "VALUE")
	for _, k := range keys {
		t.Row(k, attributeText(fields[k]))
	}
	b.WriteString(t.String())
	return b.String()
}

// attributeText shows a value as JSON, so types are visible: "gold" is a
// string, 3 a number.
func attributeText(v *structpb.Value) string {
	b, err := json.Marshal(v.AsInterface())
	if err != nil {
		return v.String()
	}
	return string(b)
}

func profileTokensCommand() *Command {
	var (
		ref      refFlags
		history  bool
		inactive bool
		apps     stringList
	)
	cmd := &Command{
		Name:    "tokens",
		Args:    "(--id ID | --identity namespace=value) [--history] [--inactive] [--app ID]...",
		Summary: "list a profile's push tokens (shortened), their state and history of moves",
		Flags: func(fs *flag.FlagSet) {
			ref.register(fs)
			fs.BoolVar(&history, "history", false, "show each token's ownership history")
			fs.BoolVar(&inactive, "inactive", false, "include inactive tokens")
			fs.Var(&apps, "app", "only tokens of this app (repeatable)")
		},
	}
	cmd.Run = func(ctx context.Context, e *Env, args []string) error {
		r, err := profileRef(cmd, "id", ref.id, ref.identity)
		if err != nil {
			return err
		}
		profiles, err := e.Profiles()
		if err != nil {
			return err
		}
		resp, err := unary(ctx, e, profileSvc, profiles.ListPushTokens, &profilev1.ListPushTokensRequest{
			Profile: r, IncludeInactive: inactive, IncludeHistory: history, AppIds: apps,
		})
		if err != nil {
			return err
		}
		if e.Global.JSON {
			return e.printJSON(resp)
		}
		if len(resp.GetTokens()) == 0 {
			what := "active tokens"
			if inactive {
				what = "tokens"
			}
			e.printf("profile %s has no %s\n", refString(r), what)
			return nil
		}
		e.print(tokenTable(resp.GetTokens(), history))
		return nil
	}
	return cmd
}

// tokenTable renders tokens, shortened, with their history of moves under
// each row when asked.
func tokenTable(tokens []*profilev1.PushToken, history bool) string {
	t := render.NewTable("TOKEN", "PLATFORM", "APP", "DEVICE", "STATE", "REASON", "SOURCE TIME")
	for _, tok := range tokens {
		t.Row(
			render.Token(tok.GetToken()),
			enums.Label(tok.GetPlatform()),
			tok.GetAppId(),
			render.Text(tok.GetDeviceId()),
			enums.Label(tok.GetState()),
			enums.Label(tok.GetInactiveReason()),
			render.Time(tok.GetSourceTime()),
		)
		if history {
			for _, m := range tok.GetHistory() {
				t.Line("  " + moveText(m))
			}
		}
	}
	return t.String()
}

func moveText(m *profilev1.TokenMove) string {
	source := ""
	if m.GetSource() != "" {
		source = " (" + m.GetSource() + ")"
	}
	if m.GetFromProfileId() == "" {
		return fmt.Sprintf("%s  registered to %s%s", render.Time(m.GetTime()), m.GetToProfileId(), source)
	}
	return fmt.Sprintf("%s  moved from %s to %s%s", render.Time(m.GetTime()), m.GetFromProfileId(), m.GetToProfileId(), source)
}

func profileUpsertCommand() *Command {
	var (
		id         string
		identities stringList
		attrs      stringList
		attrsJSON  stringList
		unset      stringList
		replace    bool
		consent    string
		consentAt  string
	)
	cmd := &Command{
		Name:    "upsert",
		Args:    "[--id ID] --identity namespace=value... [--attr key=value]... [--attr-json key=JSON]... [--unset key]... [--replace-attributes] [--consent opted-in|opted-out]",
		Summary: "create a profile or update the one owning the given id or identities",
		Help: `--attr types its value like a CSV import: true/false are booleans, plain
numbers are numbers, anything else a string. --attr-json takes any JSON value
(a list, an object, a quoted "007"). Attributes merge into the stored ones
key by key; --unset removes a key; --replace-attributes replaces them all.`,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&id, "id", "", "the profile to update")
			fs.Var(&identities, "identity", "an identity to attach, `namespace=value` (repeatable)")
			fs.Var(&attrs, "attr", "an attribute, `key=value` (repeatable)")
			fs.Var(&attrsJSON, "attr-json", "an attribute with a JSON value, `key=JSON` (repeatable)")
			fs.Var(&unset, "unset", "remove an attribute `key` (repeatable)")
			fs.BoolVar(&replace, "replace-attributes", false, "replace all attributes instead of merging")
			fs.StringVar(&consent, "consent", "", "push consent: "+words(profilev1.ConsentState(0).Descriptor()))
			fs.StringVar(&consentAt, "consent-time", "", "when consent was given, RFC 3339 or unix time (default now)")
		},
	}
	cmd.Run = func(ctx context.Context, e *Env, args []string) error {
		if id == "" && len(identities) == 0 {
			return usagef(cmd, "%s needs --id or at least one --identity", cmd.title())
		}
		req := &profilev1.UpsertProfileRequest{ProfileId: id, ReplaceAttributes: replace}
		for _, s := range identities {
			ident, err := parseIdentity(cmd, s)
			if err != nil {
				return err
			}
			req.Identities = append(req.Identities, ident)
		}
		fields := map[string]*structpb.Value{}
		for _, s := range attrs {
			k, v, ok := strings.Cut(s, "=")
			if !ok || k == "" {
				return usagef(cmd, "--attr %q: want key=value", s)
			}
			fields[k] = csvimport.AttributeValue(v)
		}
		for _, s := range attrsJSON {
			k, v, ok := strings.Cut(s, "=")
			if !ok || k == "" {
				return usagef(cmd, "--attr-json %q: want key=JSON", s)
			}
			var val structpb.Value
			if err := val.UnmarshalJSON([]byte(v)); err != nil {
				return usagef(cmd, "--attr-json %s: %v", k, err)
			}
			fields[k] = &val
		}
		for _, k := range unset {
			fields[k] = structpb.NewNullValue()
		}
		if len(fields) > 0 {
			req.Attributes = &structpb.Struct{Fields: fields}
		}
		state, err := parseEnum(cmd, "consent", profilev1.ConsentState(0).Descriptor(), consent)
		if err != nil {
			return err
		}
		if state != 0 {
			at := timestamppb.New(e.Now())
			if consentAt != "" {
				if at, err = parseTime(cmd, "consent-time", consentAt); err != nil {
					return err
				}
			}
			req.Consent = &profilev1.PushConsent{State: profilev1.ConsentState(state), UpdateTime: at}
		} else if consentAt != "" {
			return usagef(cmd, "--consent-time needs --consent")
		}
		profiles, err := e.Profiles()
		if err != nil {
			return err
		}
		resp, err := unary(ctx, e, profileSvc, profiles.UpsertProfile, req)
		if err != nil {
			return err
		}
		if e.Global.JSON {
			return e.printJSON(resp)
		}
		verb := "updated"
		if resp.GetCreated() {
			verb = "created"
		}
		e.printf("%s profile %s\n\n", verb, resp.GetProfile().GetProfileId())
		e.print(profileDetails(resp.GetProfile()))
		return nil
	}
	return cmd
}

func profileDeleteCommand() *Command {
	var ref refFlags
	cmd := &Command{
		Name:    "delete",
		Args:    "(--id ID | --identity namespace=value)",
		Summary: "erase a profile, its identities and all its tokens",
		Flags:   ref.register,
	}
	cmd.Run = func(ctx context.Context, e *Env, args []string) error {
		r, err := profileRef(cmd, "id", ref.id, ref.identity)
		if err != nil {
			return err
		}
		profiles, err := e.Profiles()
		if err != nil {
			return err
		}
		resp, err := unary(ctx, e, profileSvc, profiles.DeleteProfile, &profilev1.DeleteProfileRequest{Profile: r})
		if err != nil {
			return err
		}
		if e.Global.JSON {
			return e.printJSON(resp)
		}
		e.printf("deleted profile %s and %s token(s)\n", resp.GetProfileId(), render.Count(int64(resp.GetTokensDeleted())))
		return nil
	}
	return cmd
}

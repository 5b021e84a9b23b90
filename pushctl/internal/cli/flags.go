package cli

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/pushctl/internal/csvimport"
	"github.com/pushmesh/pushmesh/pushctl/internal/enums"
)

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// required fails when a flag was left empty.
func required(cmd *Command, pairs ...string) error {
	var missing []string
	for i := 0; i+1 < len(pairs); i += 2 {
		if strings.TrimSpace(pairs[i+1]) == "" {
			missing = append(missing, "--"+pairs[i])
		}
	}
	if len(missing) > 0 {
		return usagef(cmd, "%s needs %s", cmd.title(), strings.Join(missing, " and "))
	}
	return nil
}

// parsePlatform reads --platform: apns or fcm (ios and android accepted).
func parsePlatform(cmd *Command, s string) (commonv1.Platform, error) {
	p, err := csvimport.ParsePlatform(s)
	if err != nil {
		return 0, usagef(cmd, "--platform %v", err)
	}
	return p, nil
}

// parseEnum reads an optional enum flag; empty is the zero value.
func parseEnum(cmd *Command, flagName string, ed protoreflect.EnumDescriptor, s string) (protoreflect.EnumNumber, error) {
	if s == "" {
		return 0, nil
	}
	n, err := enums.Parse(ed, s)
	if err != nil {
		return 0, usagef(cmd, "--%s %v", flagName, err)
	}
	return n, nil
}

// parseIdentity reads "namespace=value", e.g. "customer_id=C-1042".
func parseIdentity(cmd *Command, s string) (*profilev1.Identity, error) {
	ns, value, ok := strings.Cut(s, "=")
	if !ok || strings.TrimSpace(ns) == "" || value == "" {
		return nil, usagef(cmd, "--identity %q: want namespace=value, e.g. customer_id=C-1042", s)
	}
	return &profilev1.Identity{Namespace: strings.TrimSpace(ns), Value: value}, nil
}

// profileRef reads --id or --identity (exactly one).
func profileRef(cmd *Command, idFlag, id, identity string) (*profilev1.ProfileRef, error) {
	switch {
	case id != "" && identity != "":
		return nil, usagef(cmd, "give --%s or --identity, not both", idFlag)
	case id != "":
		return &profilev1.ProfileRef{Ref: &profilev1.ProfileRef_ProfileId{ProfileId: id}}, nil
	case identity != "":
		ident, err := parseIdentity(cmd, identity)
		if err != nil {
			return nil, err
		}
		return &profilev1.ProfileRef{Ref: &profilev1.ProfileRef_Identity{Identity: ident}}, nil
	}
	return nil, usagef(cmd, "%s needs --%s ID or --identity namespace=value", cmd.title(), idFlag)
}

// parseTime reads a time flag: RFC 3339 or unix seconds or milliseconds.
func parseTime(cmd *Command, flagName, s string) (*timestamppb.Timestamp, error) {
	ts, err := csvimport.ParseTimestamp(s)
	if err != nil {
		return nil, usagef(cmd, "--%s %v", flagName, err)
	}
	return ts, nil
}

// words lists an enum's command-line words for flag help: "apns|fcm".
func words(ed protoreflect.EnumDescriptor) string {
	return strings.Join(enums.Words(ed), "|")
}

func refString(ref *profilev1.ProfileRef) string {
	if id := ref.GetIdentity(); id != nil {
		return fmt.Sprintf("%s=%s", id.GetNamespace(), id.GetValue())
	}
	return ref.GetProfileId()
}

package csvimport

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/pushctl/internal/enums"
)

// Column names, compared after lowercasing and dropping ' ', '-' and '_', so
// "customer_id", "Customer ID" and "customerId" all name the same column.
const (
	colToken           = "token"
	colPlatform        = "platform"
	colAppID           = "app_id"
	colCustomerID      = "customer_id"
	colTimestamp       = "timestamp"
	colApnsEnvironment = "apns_environment"
	colDeviceID        = "device_id"
)

var (
	requiredColumns = []string{colToken, colPlatform, colAppID, colCustomerID, colTimestamp}
	knownColumns    = append(append([]string(nil), requiredColumns...), colApnsEnvironment, colDeviceID)
)

func columnKey(name string) string {
	return strings.ToLower(strings.NewReplacer(" ", "", "-", "", "_", "").Replace(strings.TrimSpace(name)))
}

// FileError is a problem with the file as a whole (no header, a missing
// column): nothing can be imported until it is fixed.
type FileError struct {
	Line int
	Msg  string
}

func (e *FileError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
	}
	return e.Msg
}

// Columns maps a header to the fields of an ImportRow. Every column that is
// not a known one becomes a profile attribute named after its header.
type Columns struct {
	index map[string]int // known column → position
	attrs []attrColumn
	count int
	// Positions of the known columns (-1 when absent), read for every row.
	token, platform, appID, customerID, timestamp, apnsEnv, deviceID int
}

type attrColumn struct {
	pos  int
	name string
}

// ParseHeader reads the header record.
func ParseHeader(header Record) (*Columns, error) {
	c := &Columns{index: map[string]int{}, count: len(header.Fields)}
	known := map[string]string{}
	for _, k := range knownColumns {
		known[columnKey(k)] = k
	}
	seenAttr := map[string]bool{}
	for pos, raw := range header.Fields {
		name := strings.TrimSpace(raw)
		if name == "" {
			return nil, &FileError{Line: header.Line, Msg: fmt.Sprintf("column %d of the header has no name", pos+1)}
		}
		if k, ok := known[columnKey(name)]; ok {
			if _, dup := c.index[k]; dup {
				return nil, &FileError{Line: header.Line, Msg: fmt.Sprintf("column %q appears twice in the header", k)}
			}
			c.index[k] = pos
			continue
		}
		if seenAttr[name] {
			return nil, &FileError{Line: header.Line, Msg: fmt.Sprintf("column %q appears twice in the header", name)}
		}
		seenAttr[name] = true
		c.attrs = append(c.attrs, attrColumn{pos: pos, name: name})
	}
	var missing []string
	for _, k := range requiredColumns {
		if _, ok := c.index[k]; !ok {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return nil, &FileError{Line: header.Line, Msg: fmt.Sprintf(
			"the header lacks column(s) %s; want %s (optional: apns_environment, device_id, and any attribute column)",
			strings.Join(missing, ", "), strings.Join(requiredColumns, ", "))}
	}
	pos := func(col string) int {
		if p, ok := c.index[col]; ok {
			return p
		}
		return -1
	}
	c.token, c.platform, c.appID, c.customerID = pos(colToken), pos(colPlatform), pos(colAppID), pos(colCustomerID)
	c.timestamp, c.apnsEnv, c.deviceID = pos(colTimestamp), pos(colApnsEnvironment), pos(colDeviceID)
	return c, nil
}

// Attributes lists the attribute column names in file order.
func (c *Columns) Attributes() []string {
	out := make([]string, len(c.attrs))
	for i, a := range c.attrs {
		out[i] = a.name
	}
	return out
}

// Rejection is a row that was not imported, with the file line it starts on.
type Rejection struct {
	Line   int    `json:"line"`
	Field  string `json:"field,omitempty"`
	Reason string `json:"reason"`
}

// Row converts one record. A row that cannot be represented (wrong field
// count, unknown platform, unreadable timestamp) is rejected here; rules the
// server owns (token format, app id) are left to it.
func (c *Columns) Row(rec Record) (*profilev1.ImportRow, *Rejection) {
	if len(rec.Fields) != c.count {
		return nil, &Rejection{Line: rec.Line, Reason: fmt.Sprintf("has %d fields, the header has %d", len(rec.Fields), c.count)}
	}
	get := func(pos int) string {
		if pos < 0 {
			return ""
		}
		return strings.TrimSpace(rec.Fields[pos])
	}
	reject := func(field, format string, args ...any) (*profilev1.ImportRow, *Rejection) {
		return nil, &Rejection{Line: rec.Line, Field: field, Reason: fmt.Sprintf(format, args...)}
	}

	platform, err := ParsePlatform(get(c.platform))
	if err != nil {
		return reject(colPlatform, "%v", err)
	}
	ts, err := ParseTimestamp(get(c.timestamp))
	if err != nil {
		return reject(colTimestamp, "%v", err)
	}
	env, err := ParseApnsEnvironment(get(c.apnsEnv))
	if err != nil {
		return reject(colApnsEnvironment, "%v", err)
	}
	row := &profilev1.ImportRow{
		Token:           get(c.token),
		Platform:        platform,
		AppId:           get(c.appID),
		CustomerId:      get(c.customerID),
		SourceTime:      ts,
		ApnsEnvironment: env,
		DeviceId:        get(c.deviceID),
	}
	for _, a := range c.attrs {
		v := strings.TrimSpace(rec.Fields[a.pos])
		if v == "" {
			continue
		}
		if row.Attributes == nil {
			row.Attributes = &structpb.Struct{Fields: make(map[string]*structpb.Value, len(c.attrs))}
		}
		row.Attributes.Fields[a.name] = AttributeValue(v)
	}
	return row, nil
}

// ParsePlatform reads "apns" or "fcm" (any case, or the full enum name), and
// "ios" / "android" as their usual gateways.
func ParsePlatform(s string) (commonv1.Platform, error) {
	// The common spellings first: this runs for every imported row.
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "":
		return 0, errors.New("is empty; want apns or fcm")
	case "apns", "ios":
		return commonv1.Platform_PLATFORM_APNS, nil
	case "fcm", "android":
		return commonv1.Platform_PLATFORM_FCM, nil
	}
	n, err := enums.Parse(commonv1.Platform(0).Descriptor(), s)
	if err != nil {
		return 0, err
	}
	return commonv1.Platform(n), nil
}

// ParseApnsEnvironment reads "sandbox" or "production" ("development" and
// "prod" too); empty means not given.
func ParseApnsEnvironment(s string) (commonv1.ApnsEnvironment, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "":
		return commonv1.ApnsEnvironment_APNS_ENVIRONMENT_UNSPECIFIED, nil
	case "sandbox", "development", "dev":
		return commonv1.ApnsEnvironment_APNS_ENVIRONMENT_SANDBOX, nil
	case "production", "prod":
		return commonv1.ApnsEnvironment_APNS_ENVIRONMENT_PRODUCTION, nil
	}
	n, err := enums.Parse(commonv1.ApnsEnvironment(0).Descriptor(), s)
	if err != nil {
		return 0, err
	}
	return commonv1.ApnsEnvironment(n), nil
}

// Unix timestamps below this are seconds, at or above it milliseconds:
// 1e11 seconds is the year 5138, 1e11 milliseconds is 1973.
const unixMillisFrom = 1e11

// ParseTimestamp reads RFC 3339 ("2024-05-01T10:00:00Z", fractions and
// offsets allowed), unix seconds ("1714557600", "1714557600.25") or unix
// milliseconds ("1714557600000").
func ParseTimestamp(s string) (*timestamppb.Timestamp, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("is empty; want RFC 3339 or unix seconds or milliseconds")
	}
	var t time.Time
	if isUnixNumber(s) {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("cannot read %q as a unix time: %v", s, err)
		}
		if math.Abs(f) >= unixMillisFrom {
			if math.Abs(f) >= unixMillisFrom*1000 {
				return nil, fmt.Errorf("%q is out of range as unix milliseconds", s)
			}
			if i, err := strconv.ParseInt(s, 10, 64); err == nil {
				t = time.UnixMilli(i)
			} else {
				t = time.UnixMicro(int64(math.Round(f * 1e3)))
			}
		} else if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			t = time.Unix(i, 0)
		} else {
			sec, frac := math.Modf(f)
			t = time.Unix(int64(sec), int64(math.Round(frac*1e9)))
		}
	} else {
		var err error
		t, err = time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return nil, fmt.Errorf("cannot read %q: want RFC 3339 (2024-05-01T10:00:00Z) or unix seconds or milliseconds", s)
		}
	}
	ts := timestamppb.New(t)
	if err := ts.CheckValid(); err != nil {
		return nil, fmt.Errorf("%q is out of range", s)
	}
	return ts, nil
}

// isUnixNumber reports whether s is an optionally signed decimal number.
func isUnixNumber(s string) bool {
	if s[0] == '-' {
		s = s[1:]
	}
	digits, dot := 0, false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9':
			digits++
		case c == '.' && !dot && digits > 0:
			dot = true
		default:
			return false
		}
	}
	return digits > 0 && s[len(s)-1] != '.'
}

// Numbers with more significant digits than a float64 holds exactly stay
// strings, so long account numbers are not rounded.
const maxExactDigits = 15

// AttributeValue types an attribute read from text: "true"/"false" (any
// case) are booleans; decimal numbers are numbers unless they look like an
// identifier (a leading zero as in "007", a leading '+', too many digits to
// be exact); everything else is a string.
func AttributeValue(s string) *structpb.Value {
	switch strings.ToLower(s) {
	case "true":
		return structpb.NewBoolValue(true)
	case "false":
		return structpb.NewBoolValue(false)
	}
	if looksNumeric(s) {
		if f, err := strconv.ParseFloat(s, 64); err == nil && !math.IsInf(f, 0) {
			return structpb.NewNumberValue(f)
		}
	}
	return structpb.NewStringValue(s)
}

// looksNumeric accepts -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? with at
// most maxExactDigits digits in the mantissa.
func looksNumeric(s string) bool {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	start, digits := i, 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
		digits++
	}
	if digits == 0 || (digits > 1 && s[start] == '0') {
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		frac := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
			frac++
		}
		if frac == 0 {
			return false
		}
		digits += frac
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		exp := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
			exp++
		}
		if exp == 0 {
			return false
		}
	}
	return i == len(s) && digits <= maxExactDigits
}

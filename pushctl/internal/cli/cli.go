// Package cli is pushctl: the command tree, global flags, the connections to
// the services, output (tables or --json) and the mapping of errors to
// messages and exit codes.
//
// Commands are plain values built by functions listed in commands(); adding
// one (e.g. `pushctl dev`) is one function and one line there.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"

	"github.com/pushmesh/pushmesh/servicekit/tenant"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig"
)

var tracer = otel.Tracer("github.com/pushmesh/pushmesh/pushctl/internal/cli")

// Command is one node of the command tree: a group with subcommands, or a
// leaf with flags and a Run function.
type Command struct {
	// Name is the word typed on the command line.
	Name string
	// Args is the synopsis after the name, e.g. "FILE.csv [--batch N]".
	Args string
	// Summary is one line for the parent's list.
	Summary string
	// Help is extra text for `pushctl help <command>`.
	Help string
	// Sub are the subcommands of a group.
	Sub []*Command
	// Flags registers the leaf's own flags.
	Flags func(fs *flag.FlagSet)
	// MinArgs and MaxArgs bound the positional arguments (MaxArgs -1: any).
	MinArgs, MaxArgs int
	// Run executes the leaf with its positional arguments.
	Run func(ctx context.Context, e *Env, args []string) error

	parent *Command
}

// path is the full command, e.g. "pushctl app register".
func (c *Command) path() string {
	if c.parent == nil {
		return c.Name
	}
	return c.parent.path() + " " + c.Name
}

// title is the command without the program name, e.g. "app register";
// "pushctl" for the root.
func (c *Command) title() string {
	if c.parent == nil {
		return c.Name
	}
	return strings.TrimPrefix(c.path(), "pushctl ")
}

func (c *Command) find(name string) *Command {
	for _, s := range c.Sub {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// commands lists the top-level commands in help order. A new command is a
// function returning *Command, added here.
func commands() []*Command {
	return []*Command{
		appCommand(),
		importCommand(),
		profileCommand(),
		tokenCommand(),
		journeyCommand(),
		metricsCommand(),
		devCommand(),
	}
}

func rootCommand() *Command {
	root := &Command{Name: "pushctl", Sub: commands()}
	root.Sub = append(root.Sub, &Command{Name: "help", Args: "[COMMAND...]", Summary: "show help for pushctl or a command"})
	var link func(c *Command)
	link = func(c *Command) {
		for _, s := range c.Sub {
			s.parent = c
			link(s)
		}
	}
	link(root)
	return root
}

// Globals are the flags every command accepts, before or after its name.
type Globals struct {
	ProfileAddr  string
	DeliveryAddr string
	TrackingAddr string
	Tenant       string
	Timeout      time.Duration
	JSON         bool
	// TLS files for the connections to the three services (--tls-ca,
	// --tls-cert, --tls-key, --tls-server-name); none: plaintext.
	TLSCA, TLSCert, TLSKey, TLSServerName string
}

// tlsFiles are the client TLS files the connections use.
func (g *Globals) tlsFiles() tlsconfig.Client {
	return tlsconfig.Client{CAFile: g.TLSCA, CertFile: g.TLSCert, KeyFile: g.TLSKey, ServerName: g.TLSServerName, FlagPrefix: "--tls"}
}

// Environment variables read as flag defaults.
const (
	envProfileAddr  = "PUSHCTL_PROFILE_ADDR"
	envDeliveryAddr = "PUSHCTL_DELIVERY_ADDR"
	envTrackingAddr = "PUSHCTL_TRACKING_ADDR"
	envTenant       = "PUSHCTL_TENANT"
	envTimeout      = "PUSHCTL_TIMEOUT"
	envJSON         = "PUSHCTL_JSON"
	envTLSCA        = "PUSHCTL_TLS_CA"
	envTLSCert      = "PUSHCTL_TLS_CERT"
	envTLSKey       = "PUSHCTL_TLS_KEY"
	envTLSServer    = "PUSHCTL_TLS_SERVER_NAME"
)

// defaultGlobals are the built-in defaults overridden by the environment.
func defaultGlobals(getenv func(string) string) (Globals, error) {
	g := Globals{
		ProfileAddr:  "127.0.0.1:7101",
		DeliveryAddr: "127.0.0.1:7102",
		TrackingAddr: "127.0.0.1:7103",
		Tenant:       tenant.Default,
		Timeout:      30 * time.Second,
	}
	for name, p := range map[string]*string{envProfileAddr: &g.ProfileAddr, envDeliveryAddr: &g.DeliveryAddr, envTrackingAddr: &g.TrackingAddr, envTenant: &g.Tenant,
		envTLSCA: &g.TLSCA, envTLSCert: &g.TLSCert, envTLSKey: &g.TLSKey, envTLSServer: &g.TLSServerName} {
		if v := getenv(name); v != "" {
			*p = v
		}
	}
	if v := getenv(envTimeout); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return g, usagef(nil, "%s=%q: want a duration such as 30s", envTimeout, v)
		}
		g.Timeout = d
	}
	if v := getenv(envJSON); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return g, usagef(nil, "%s=%q: want true or false", envJSON, v)
		}
		g.JSON = b
	}
	return g, nil
}

// register adds the global flags to fs, with their current values as
// defaults, so flags after the command name override flags before it.
func (g *Globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.ProfileAddr, "profile-addr", g.ProfileAddr, "profilesvc `host:port` ($"+envProfileAddr+")")
	fs.StringVar(&g.DeliveryAddr, "delivery-addr", g.DeliveryAddr, "deliverysvc `host:port` ($"+envDeliveryAddr+")")
	fs.StringVar(&g.TrackingAddr, "tracking-addr", g.TrackingAddr, "trackingsvc `host:port` ($"+envTrackingAddr+")")
	fs.StringVar(&g.Tenant, "tenant", g.Tenant, "tenant the calls belong to ($"+envTenant+")")
	fs.DurationVar(&g.Timeout, "timeout", g.Timeout, "deadline of each request; 0 for none; streams (import, watch) are not limited ($"+envTimeout+")")
	fs.BoolVar(&g.JSON, "json", g.JSON, "machine output: protojson documents, JSON lines for streams ($"+envJSON+")")
	fs.StringVar(&g.TLSCA, "tls-ca", g.TLSCA, "PEM CA bundle that signed the services' certificates: connect over TLS ($"+envTLSCA+")")
	fs.StringVar(&g.TLSCert, "tls-cert", g.TLSCert, "PEM client certificate for services that require one (mutual TLS); needs --tls-key and --tls-ca ($"+envTLSCert+")")
	fs.StringVar(&g.TLSKey, "tls-key", g.TLSKey, "PEM private key of --tls-cert ($"+envTLSKey+")")
	fs.StringVar(&g.TLSServerName, "tls-server-name", g.TLSServerName, "name to verify in every service's certificate instead of the host of its address ($"+envTLSServer+")")
}

func (g *Globals) validate() error {
	for _, a := range []struct{ flag, addr string }{{"--profile-addr", g.ProfileAddr}, {"--delivery-addr", g.DeliveryAddr}, {"--tracking-addr", g.TrackingAddr}} {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return usagef(nil, "%s %q: want host:port", a.flag, a.addr)
		}
	}
	if err := tenant.Validate(g.Tenant); err != nil {
		return usagef(nil, "--tenant: %v", err)
	}
	if g.Timeout < 0 {
		return usagef(nil, "--timeout must not be negative")
	}
	if err := g.tlsFiles().Check(); err != nil {
		return usagef(nil, "%v", err)
	}
	return nil
}

// options are what Run takes from the process; tests replace them.
type options struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	now            func() time.Time
	// terminal reports whether stderr is a terminal (progress bars).
	terminal bool
}

// Run runs pushctl with the arguments after the program name. It prints
// results to stdout and progress to stderr, and returns the error that
// decides the exit code; main prints it with Report.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return run(ctx, args, options{
		stdout:   stdout,
		stderr:   stderr,
		getenv:   os.Getenv,
		now:      time.Now,
		terminal: isTerminal(stderr),
	})
}

// isTerminal reports whether w is a character device (a terminal), not a
// file or a pipe.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func run(ctx context.Context, args []string, opts options) error {
	root := rootCommand()
	g, err := defaultGlobals(opts.getenv)
	if err != nil {
		return err
	}
	// Walk down the groups; global flags may come before any command word.
	cmd := root
	for len(cmd.Sub) > 0 {
		fs := newFlagSet(cmd)
		g.register(fs)
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				writeHelp(opts.stdout, cmd)
				return nil
			}
			return usagef(cmd, "%s", flagMessage(err))
		}
		args = fs.Args()
		if len(args) == 0 {
			if cmd == root {
				writeHelp(opts.stderr, root)
				return &exitError{code: ExitUsage}
			}
			return usagef(cmd, "%s needs a subcommand: %s", cmd.title(), subNames(cmd))
		}
		next := cmd.find(args[0])
		if next == nil {
			return usagef(cmd, "unknown command %q for %s; commands: %s", args[0], cmd.title(), subNames(cmd))
		}
		cmd, args = next, args[1:]
		if cmd.Name == "help" && cmd.parent == root {
			return help(opts.stdout, root, args)
		}
	}

	fs := newFlagSet(cmd)
	if cmd.Flags != nil {
		cmd.Flags(fs)
	}
	g.register(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			writeHelp(opts.stdout, cmd)
			return nil
		}
		return usagef(cmd, "%s", flagMessage(err))
	}
	if len(pos) < cmd.MinArgs || (cmd.MaxArgs >= 0 && len(pos) > cmd.MaxArgs) {
		return usagef(cmd, "%s takes %s", cmd.title(), argCount(cmd))
	}
	if err := g.validate(); err != nil {
		return err
	}

	e := &Env{Stdout: opts.stdout, Stderr: opts.stderr, Global: g, Terminal: opts.terminal, Now: opts.now, cmd: cmd}
	defer e.close()
	ctx = tenant.With(ctx, g.Tenant)
	ctx, span := tracer.Start(ctx, cmd.path())
	span.SetAttributes(attribute.String("pushmesh.tenant", g.Tenant))
	defer span.End()
	err = cmd.Run(ctx, e, pos)
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	return err
}

func newFlagSet(c *Command) *flag.FlagSet {
	fs := flag.NewFlagSet(c.path(), flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported once, by Report
	fs.Usage = func() {}
	return fs
}

// flagMessage rewrites the flag package's messages in the --flag spelling
// the help uses.
func flagMessage(err error) string {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return "unknown flag --" + name
	}
	msg = strings.Replace(msg, " for flag -", " for --", 1)
	msg = strings.Replace(msg, "flag needs an argument: -", "flag needs an argument: --", 1)
	return msg
}

// parseInterspersed parses flags anywhere among the positional arguments
// ("import crm.csv --batch 100"); after "--" everything is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func argCount(c *Command) string {
	switch {
	case c.MaxArgs == 0:
		return "no arguments"
	case c.MinArgs == c.MaxArgs:
		return fmt.Sprintf("exactly %d argument(s): %s", c.MinArgs, c.Args)
	case c.MaxArgs < 0:
		return fmt.Sprintf("at least %d argument(s): %s", c.MinArgs, c.Args)
	default:
		return fmt.Sprintf("%d to %d arguments: %s", c.MinArgs, c.MaxArgs, c.Args)
	}
}

func subNames(c *Command) string {
	var names []string
	for _, s := range c.Sub {
		names = append(names, s.Name)
	}
	return strings.Join(names, ", ")
}

func help(w io.Writer, root *Command, args []string) error {
	cmd := root
	for _, a := range args {
		next := cmd.find(a)
		if next == nil {
			return usagef(cmd, "no help for %q: %s has commands %s", a, cmd.title(), subNames(cmd))
		}
		cmd = next
	}
	writeHelp(w, cmd)
	return nil
}

// writeHelp prints the help of a command: synopsis, description, its
// subcommands or its flags; the root also lists global flags, environment
// variables and exit codes.
func writeHelp(w io.Writer, c *Command) {
	var b strings.Builder
	if c.parent == nil {
		b.WriteString("pushctl is the command-line client of pushmesh: apps and credentials, token\nimports, profiles and tokens, journeys and their metrics.\n\n")
		b.WriteString("usage: pushctl [global flags] COMMAND [flags] [arguments]\n")
	} else {
		fmt.Fprintf(&b, "usage: %s", c.path())
		if len(c.Sub) > 0 {
			b.WriteString(" COMMAND")
		}
		if c.Args != "" {
			b.WriteString(" " + c.Args)
		}
		b.WriteString("\n")
		if c.Summary != "" {
			fmt.Fprintf(&b, "\n%s%s.\n", strings.ToUpper(c.Summary[:1]), c.Summary[1:])
		}
	}
	if c.Help != "" {
		b.WriteString("\n" + strings.TrimSpace(c.Help) + "\n")
	}
	if len(c.Sub) > 0 {
		b.WriteString("\ncommands:\n")
		width := 0
		for _, s := range c.Sub {
			width = max(width, len(s.Name))
		}
		for _, s := range c.Sub {
			fmt.Fprintf(&b, "  %-*s  %s\n", width, s.Name, s.Summary)
		}
	}
	if len(c.Sub) == 0 && c.Flags != nil {
		fs := newFlagSet(c)
		c.Flags(fs)
		b.WriteString("\nflags:\n")
		writeFlags(&b, fs)
	}
	if c.parent == nil {
		g, _ := defaultGlobals(func(string) string { return "" })
		fs := newFlagSet(c)
		g.register(fs)
		b.WriteString("\nglobal flags (before or after the command; defaults from the environment):\n")
		writeFlags(&b, fs)
		b.WriteString("\nexit codes:\n")
		for _, ec := range exitCodes {
			fmt.Fprintf(&b, "  %3d  %s\n", ec.code, ec.meaning)
		}
		b.WriteString("\nRun 'pushctl help COMMAND' for the flags of a command.\n")
	} else if len(c.Sub) == 0 {
		b.WriteString("\nGlobal flags (--json, --tenant, --timeout, addresses, --tls-*) work here too: see 'pushctl help'.\n")
	}
	io.WriteString(w, b.String())
}

func writeFlags(b *strings.Builder, fs *flag.FlagSet) {
	type line struct{ left, usage string }
	var lines []line
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		left := "--" + f.Name
		if name != "" {
			left += " " + name
		}
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "[]" {
			usage += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		lines = append(lines, line{left, usage})
	})
	sort.Slice(lines, func(i, j int) bool { return lines[i].left < lines[j].left })
	width := 0
	for _, l := range lines {
		width = max(width, len(l.left))
	}
	for _, l := range lines {
		fmt.Fprintf(b, "  %-*s  %s\n", width, l.left, l.usage)
	}
}

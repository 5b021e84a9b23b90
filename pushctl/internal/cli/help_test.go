package cli

import (
	"regexp"
	"testing"
)

// Every --flag a synopsis or help text names is a flag of that command (or
// a global one): `pushctl dev` once advertised [--exit], which failed as an
// unknown flag.
func TestHelpNamesOnlyRealFlags(t *testing.T) {
	flagName := regexp.MustCompile(`--([a-z][a-z0-9-]*)`)
	var walk func(c *Command)
	walk = func(c *Command) {
		for _, s := range c.Sub {
			walk(s)
		}
		if len(c.Sub) > 0 || c.Run == nil {
			return
		}
		fs := newFlagSet(c)
		if c.Flags != nil {
			c.Flags(fs)
		}
		g := Globals{}
		g.register(fs)
		for _, text := range []string{c.Args, c.Help} {
			for _, m := range flagName.FindAllStringSubmatch(text, -1) {
				if fs.Lookup(m[1]) == nil {
					t.Errorf("%s: help names --%s, which is not one of its flags", c.path(), m[1])
				}
			}
		}
	}
	walk(rootCommand())
}

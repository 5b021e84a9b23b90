package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/pushmesh/pushmesh/pushctl/internal/csvimport"
	"github.com/pushmesh/pushmesh/pushctl/internal/progress"
	"github.com/pushmesh/pushmesh/pushctl/internal/render"
)

// shownRejections is how many rejected rows the text summary lists; --json
// carries all the ones known (at most csvimport.MaxRejections).
const shownRejections = 20

func importCommand() *Command {
	var batch int
	cmd := &Command{
		Name:    "import",
		Args:    "FILE.csv [--batch 5000]",
		Summary: "import push tokens from a CRM export (CSV) through ImportTokens",
		Help: `The first line names the columns, in any order:
  token, platform, app_id, customer_id, timestamp   required
  apns_environment, device_id                       optional
  any other column                                  a profile attribute
Column names ignore case, spaces, '-' and '_' (customer_id = "Customer ID").
The delimiter (',', ';', tab or '|') is detected from the header; fields may
be quoted ("a, b"), with "" for a quote inside quotes.

platform is apns or fcm (ios and android work too); timestamp is RFC 3339
(2024-05-01T10:00:00Z) or unix seconds or milliseconds. Attribute values
"true"/"false" become booleans, plain numbers become numbers (not "007" or
"+33..."), anything else a string; empty cells are left out.

A malformed line is reported with its line number and skipped: it counts as
rejected and never aborts the import. The import is idempotent: rerunning a
file converges to the same state. Exit code 1 when any row was rejected.
Use "-" to read from standard input.`,
		MinArgs: 1, MaxArgs: 1,
		Flags: func(fs *flag.FlagSet) {
			fs.IntVar(&batch, "batch", csvimport.DefaultBatchSize, "rows per request")
		},
	}
	cmd.Run = func(ctx context.Context, e *Env, args []string) error {
		if batch < 1 || batch > csvimport.MaxBatchSize {
			return usagef(cmd, "--batch must be 1 to %d", csvimport.MaxBatchSize)
		}
		return runImport(ctx, e, cmd, args[0], batch)
	}
	return cmd
}

func runImport(ctx context.Context, e *Env, cmd *Command, name string, batch int) error {
	var (
		src  io.Reader
		size int64
	)
	if name == "-" {
		src = os.Stdin
	} else {
		f, err := os.Open(name)
		if err != nil {
			return usagef(cmd, "%v", err)
		}
		defer f.Close()
		if st, err := f.Stat(); err == nil {
			size = st.Size()
		}
		src = f
	}
	imp, err := csvimport.NewImporter(src)
	if err != nil {
		var fe *csvimport.FileError
		if errors.As(err, &fe) {
			return usagef(cmd, "%s: %v", name, fe)
		}
		return fmt.Errorf("%s: %w", name, err)
	}

	profiles, err := e.Profiles()
	if err != nil {
		return err
	}
	// The stream lives as long as the import: --timeout bounds single
	// requests, not a file of millions of rows.
	stream, err := profiles.ImportTokens(ctx)
	if err != nil {
		return e.rpcError(profileSvc, err)
	}
	start := e.Now()
	meter := progress.New(e.Stderr, e.Terminal, e.Now)
	var last csvimport.Progress
	status := func() string { return importStatus(last, size, e.Now().Sub(start), e.Terminal) }
	res, err := imp.Run(ctx, stream, batch, func(p csvimport.Progress) {
		last = p
		meter.Update(status)
	})
	if err != nil {
		meter.Done("")
		var re *csvimport.ReadError
		if errors.As(err, &re) {
			return fmt.Errorf("%s: %w", name, err)
		}
		return e.rpcError(profileSvc, err)
	}
	last = csvimport.Progress{Sent: res.Response.GetRows(), Malformed: res.Malformed, Bytes: size}
	meter.Done(status())
	elapsed := e.Now().Sub(start)

	if e.Global.JSON {
		if err := printImportJSON(e, name, res); err != nil {
			return err
		}
	} else {
		e.print(importSummary(name, res, elapsed))
	}
	if n := res.TotalRejected(); n > 0 {
		return &exitError{code: ExitFailed, msg: fmt.Sprintf("%s of %s rows were rejected", render.Count(n), render.Count(res.Records))}
	}
	return nil
}

// importStatus is the progress line: a bar against the file size on a
// terminal when the size is known, counts and rate always.
func importStatus(p csvimport.Progress, size int64, elapsed time.Duration, terminal bool) string {
	rows := p.Sent + p.Malformed
	rate := 0.0
	if elapsed > 0 {
		rate = float64(rows) / elapsed.Seconds()
	}
	var b strings.Builder
	if terminal && size > 0 {
		fraction := float64(p.Bytes) / float64(size)
		fmt.Fprintf(&b, "%s %3.0f%%  ", progress.Bar(fraction, 24), 100*min(fraction, 1))
	} else {
		b.WriteString("import: ")
	}
	fmt.Fprintf(&b, "%s rows  %s", render.Count(rows), render.Rate(rate, "rows"))
	if p.Malformed > 0 {
		fmt.Fprintf(&b, "  %s malformed", render.Count(p.Malformed))
	}
	return b.String()
}

// importSummary is the text result of an import.
func importSummary(name string, res *csvimport.Result, elapsed time.Duration) string {
	r := res.Response
	var b strings.Builder
	rate := 0.0
	if elapsed > 0 {
		rate = float64(res.Records) / elapsed.Seconds()
	}
	fmt.Fprintf(&b, "imported %s: %s rows in %s (%s)\n\n", name, render.Count(res.Records), render.Duration(elapsed), render.Rate(rate, "rows"))
	var kv render.KeyValues
	kv.Number(0, "created", render.Count(r.GetCreated()))
	kv.Number(0, "updated", render.Count(r.GetUpdated()))
	kv.Number(0, "moved", render.Count(r.GetMoved()))
	kv.Number(0, "unchanged", render.Count(r.GetUnchanged()))
	kv.Number(0, "rejected", render.Count(res.TotalRejected()))
	if res.Malformed > 0 {
		kv.Number(1, "by pushctl (malformed)", render.Count(res.Malformed))
		kv.Number(1, "by profilesvc", render.Count(r.GetRejected()))
	}
	kv.Number(0, "profiles created", render.Count(r.GetProfilesCreated()))
	b.WriteString(kv.String())
	if len(res.Rejected) > 0 {
		shown := res.Rejected
		if len(shown) > shownRejections {
			shown = shown[:shownRejections]
		}
		fmt.Fprintf(&b, "\nfirst rejected rows:\n")
		t := render.NewTable("LINE", "FIELD", "REASON").AlignRight(0)
		for _, rj := range shown {
			line := "?"
			if rj.Line > 0 {
				line = fmt.Sprint(rj.Line)
			}
			t.Row(line, render.Text(rj.Field), rj.Reason)
		}
		b.WriteString(t.String())
		if more := res.TotalRejected() - int64(len(shown)); more > 0 {
			fmt.Fprintf(&b, "… and %s more\n", render.Count(more))
		}
	}
	return b.String()
}

// importJSON is the --json document of an import: the server's response
// untouched, plus what only pushctl knows (malformed rows, file lines).
type importJSON struct {
	File      string                `json:"file"`
	Records   int64                 `json:"records"`
	Malformed int64                 `json:"malformed"`
	Rejected  int64                 `json:"rejected"`
	Response  json.RawMessage       `json:"response"`
	Rows      []csvimport.Rejection `json:"rejectedRows"`
}

func printImportJSON(e *Env, name string, res *csvimport.Result) error {
	resp, err := protojson.Marshal(res.Response)
	if err != nil {
		return err
	}
	rows := res.Rejected
	if rows == nil {
		rows = []csvimport.Rejection{}
	}
	b, err := json.MarshalIndent(importJSON{
		File: name, Records: res.Records, Malformed: res.Malformed, Rejected: res.TotalRejected(),
		Response: resp, Rows: rows,
	}, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(e.Stdout, "%s\n", b)
	return err
}

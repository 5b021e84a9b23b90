package cli

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// devArgs runs `pushctl dev` on free loopback ports, except those given in
// extra (which come last and win).
func devArgs(t *testing.T, dataDir string, extra ...string) []string {
	t.Helper()
	args := []string{"dev", "--data-dir", dataDir, "--keep-running=false", "--profiles", "20",
		"--profile-addr", "127.0.0.1:0", "--delivery-addr", "127.0.0.1:0", "--tracking-addr", "127.0.0.1:0",
		"--apns-addr", "127.0.0.1:0", "--fcm-addr", "127.0.0.1:0", "--tracking-http-addr", "127.0.0.1:0"}
	return append(args, extra...)
}

// A busy port is an ordinary failure (exit 1) naming the address, not a
// panic.
func TestDevWithABusyPort(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	r := runCLI(t, nil, time.Now(), devArgs(t, t.TempDir(), "--tracking-addr", busy.Addr().String())...)
	if r.code != ExitFailed {
		t.Errorf("exit %d, want %d; stderr %q", r.code, ExitFailed, r.stderr)
	}
	for _, want := range []string{"pushctl: start the mesh: trackingsvc:", busy.Addr().String(), "address already in use", "--tracking-addr"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr %q does not say %q", r.stderr, want)
		}
	}
}

// busyAddr holds a loopback port for the test: `pushctl dev` given it as
// --apns-addr (the first thing it starts) prepares its data dir and then
// fails, so the data-dir rules are tested without running the demo.
func busyAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// A folder pushctl dev did not make is never wiped: a non-empty one without
// the marker is refused as a usage error and left as it was.
func TestDevRefusesAFolderItDidNotMake(t *testing.T) {
	for name, files := range map[string]map[string]string{
		"a service's data":          {"trackingsvc.db": "production data", "notes.txt": "x"},
		"pushctl dev's layout":      {"services.log": "", "emulator-ca.pem": "", "profilesvc/profiles.db": "production data"},
		"a hidden file only":        {".keep": ""},
		"a marker that is a folder": {devMarker + "/x": ""},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, files)
			before := dirNames(t, dir)
			r := runCLI(t, nil, time.Now(), devArgs(t, dir, "--apns-addr", busyAddr(t))...)
			if r.code != ExitUsage {
				t.Errorf("exit %d, want %d; stderr %q", r.code, ExitUsage, r.stderr)
			}
			for _, want := range []string{"refusing to wipe", dir, devMarker} {
				if !strings.Contains(r.stderr, want) {
					t.Errorf("stderr %q does not say %q", r.stderr, want)
				}
			}
			if after := dirNames(t, dir); !slices.Equal(before, after) {
				t.Errorf("the folder held %v, now %v", before, after)
			}
			for name, content := range files {
				if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(b) != content {
					t.Errorf("%s: %q, %v; want %q", name, b, err, content)
				}
			}
		})
	}
}

func TestDevRefusesAFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "data")
	writeFiles(t, filepath.Dir(file), map[string]string{"data": "x"})
	r := runCLI(t, nil, time.Now(), devArgs(t, file, "--apns-addr", busyAddr(t))...)
	if r.code != ExitUsage || !strings.Contains(r.stderr, "not a folder") {
		t.Errorf("exit %d, stderr %q; want %d and not a folder", r.code, r.stderr, ExitUsage)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "x" {
		t.Errorf("the file now holds %q, %v", b, err)
	}
}

// A new or empty folder is used and marked; a marked one is emptied (but
// not replaced: a symlinked folder stays a symlink).
func TestDevUsesNewEmptyAndMarkedFolders(t *testing.T) {
	base := t.TempDir()
	marked := filepath.Join(base, "marked")
	writeFiles(t, marked, map[string]string{devMarker: "", "services.log": "old log", "profilesvc/profiles.db": "old", "stale.txt": "x"})
	linked := filepath.Join(base, "linked")
	writeFiles(t, filepath.Join(base, "target"), map[string]string{devMarker: "", "stale.txt": "x"})
	if err := os.Symlink(filepath.Join(base, "target"), linked); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(base, "empty")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{filepath.Join(base, "new", "dev"), empty, marked, linked} {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			r := runCLI(t, nil, time.Now(), devArgs(t, dir, "--apns-addr", busyAddr(t))...)
			if r.code != ExitFailed || !strings.Contains(r.stderr, "address already in use") {
				t.Fatalf("exit %d, stderr %q; want the busy port's failure", r.code, r.stderr)
			}
			names := dirNames(t, dir)
			if !slices.Contains(names, devMarker) {
				t.Errorf("no marker in %v", names)
			}
			for _, n := range names {
				if n == "stale.txt" || n == "profilesvc" {
					t.Errorf("%s survived the wipe: %v", n, names)
				}
			}
			if b, _ := os.ReadFile(filepath.Join(dir, "services.log")); strings.Contains(string(b), "old log") {
				t.Errorf("services.log kept the old log")
			}
		})
	}
	if fi, err := os.Lstat(linked); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the symlinked folder was replaced: %v, %v", fi, err)
	}
}

// The default folder made by pushctl dev before it wrote the marker is
// still reused, so `make dev` keeps working; the same layout elsewhere is
// refused.
func TestDevReusesItsOldDefaultFolder(t *testing.T) {
	old := map[string]string{
		"services.log": "old log", "emulator-ca.pem": "pem",
		"profilesvc/profiles.db": "", "deliverysvc/delivery.db": "", "trackingsvc/tracking.db": "",
	}
	t.Chdir(t.TempDir())
	def := filepath.Join(".pushmesh", "dev")
	writeFiles(t, def, old)
	args := devArgs(t, "", "--apns-addr", busyAddr(t))
	args = slices.Delete(args, 1, 3) // no --data-dir: the default
	r := runCLI(t, nil, time.Now(), args...)
	if r.code != ExitFailed || !strings.Contains(r.stderr, "address already in use") {
		t.Fatalf("exit %d, stderr %q; want the busy port's failure", r.code, r.stderr)
	}
	if names := dirNames(t, def); !slices.Contains(names, devMarker) || slices.Contains(names, "profilesvc") {
		t.Errorf("the old default folder was not wiped and marked: %v", names)
	}

	elsewhere := filepath.Join(t.TempDir(), "dev")
	writeFiles(t, elsewhere, old)
	r = runCLI(t, nil, time.Now(), devArgs(t, elsewhere, "--apns-addr", busyAddr(t))...)
	if r.code != ExitUsage || !slices.Contains(dirNames(t, elsewhere), "profilesvc") {
		t.Errorf("exit %d, stderr %q: the old layout outside the default folder was not refused", r.code, r.stderr)
	}
}

package store

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// writebackEvery is how often startWriteback asks the kernel to write back.
const writebackEvery = 20 * time.Millisecond

// startWriteback asks the kernel, every writebackEvery until stop is
// called, to start writing the dirty pages of the file at path to disk,
// without waiting for them (sync_file_range with SYNC_FILE_RANGE_WRITE).
// bbolt's commit writes every page of a big import batch (hundreds of MiB)
// and only then flushes them with fdatasync, which then waits for the disk
// to take all of it; started early, that writeback overlaps the commit's
// page building and writes. Durability is unchanged: the commit still
// flushes before and after writing its meta page.
func startWriteback(path string) (stop func()) {
	// A second descriptor of the file: writeback is per file, whatever the
	// descriptor, and closing it does not drop bbolt's lock (flock locks
	// belong to bbolt's own descriptor, unlike fcntl locks).
	f, err := os.Open(path)
	if err != nil {
		return func() {} // only a hint: the commit flushes anyway
	}
	done := make(chan struct{})
	go func() {
		defer f.Close()
		t := time.NewTicker(writebackEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
			}
		}
	}()
	return func() { close(done) }
}

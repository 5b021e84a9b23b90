package ringlog

import (
	"slices"
	"sync"
	"testing"
)

func TestLogKeepsNewestInOrder(t *testing.T) {
	tests := []struct {
		name    string
		max     int
		appends int
		want    []int
	}{
		{"empty", 3, 0, []int{}},
		{"under capacity", 3, 2, []int{1, 2}},
		{"exactly full", 3, 3, []int{1, 2, 3}},
		{"wrapped once", 3, 5, []int{3, 4, 5}},
		{"wrapped many times", 3, 10, []int{8, 9, 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := New[int](tt.max)
			for i := 1; i <= tt.appends; i++ {
				if got := l.Append(i); got != uint64(i) {
					t.Fatalf("Append returned seq %d, want %d", got, i)
				}
			}
			if got := l.Snapshot(nil, 0); !slices.Equal(got, tt.want) {
				t.Errorf("Snapshot = %v, want %v", got, tt.want)
			}
			retained, total := l.Len()
			if retained != len(tt.want) || total != uint64(tt.appends) {
				t.Errorf("Len = %d, %d, want %d, %d", retained, total, len(tt.want), tt.appends)
			}
		})
	}
}

func TestLogFilterLimitReset(t *testing.T) {
	l := New[int](4)
	for i := 1; i <= 6; i++ {
		l.Append(i)
	}
	even := func(v *int) bool { return *v%2 == 0 }
	if got, want := l.Snapshot(even, 0), []int{4, 6}; !slices.Equal(got, want) {
		t.Errorf("Snapshot(even) = %v, want %v", got, want)
	}
	if got, want := l.Snapshot(nil, 2), []int{5, 6}; !slices.Equal(got, want) {
		t.Errorf("Snapshot(limit 2) = %v, want %v", got, want)
	}
	l.Reset()
	if got := l.Snapshot(nil, 0); len(got) != 0 {
		t.Errorf("after Reset Snapshot = %v, want empty", got)
	}
	if got := l.Append(7); got != 1 {
		t.Errorf("after Reset Append seq = %d, want 1", got)
	}
}

func TestLogConcurrentAppend(t *testing.T) {
	l := New[int](100)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				l.Append(i)
			}
		}()
	}
	wg.Wait()
	retained, total := l.Len()
	if retained != 100 || total != 8000 {
		t.Errorf("Len = %d, %d, want 100, 8000", retained, total)
	}
}

func TestLogAcrossChunks(t *testing.T) {
	const max = chunkSize*2 + 10
	l := New[int](max)
	for i := 1; i <= max+chunkSize+3; i++ {
		l.Append(i)
	}
	got := l.Snapshot(nil, 0)
	if len(got) != max {
		t.Fatalf("got %d entries, want %d", len(got), max)
	}
	for k, v := range got {
		if want := chunkSize + 3 + k + 1; v != want {
			t.Fatalf("entry %d: got %d, want %d", k, v, want)
		}
	}
}

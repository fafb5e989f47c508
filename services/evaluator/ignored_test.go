package evaluator

import (
	"fmt"
	"testing"
)

// TestIgnoredSetIsBounded: each unknown endpoint is logged once; past
// maxIgnored names the set stops growing and says so once.
func TestIgnoredSetIsBounded(t *testing.T) {
	var s ignoredSet
	counts := map[int]int{}
	for i := range maxIgnored + 100 {
		name := fmt.Sprintf("stranger-%d", i)
		counts[s.add(name)]++
		if got := s.add(name); got != ignoredSeen {
			t.Fatalf("second event of %s: %d, want seen", name, got)
		}
	}
	if counts[ignoredNew] != maxIgnored || counts[ignoredFull] != 1 || counts[ignoredSeen] != 99 {
		t.Errorf("results %v, want %d new, 1 full, 99 seen", counts, maxIgnored)
	}
	if len(s.names) != maxIgnored {
		t.Errorf("the set holds %d names, want at most %d", len(s.names), maxIgnored)
	}
}

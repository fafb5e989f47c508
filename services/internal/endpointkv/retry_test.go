package endpointkv_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/switchboard-llm/switchboard/services/internal/endpointkv"
)

// TestRetryConflicts: a conflict is retried after a wait that grows from
// 1 ms; any other result ends the loop; MaxConflicts conflicts in a row end
// it with ErrConflictLimit; a context that ends stops the wait.
func TestRetryConflicts(t *testing.T) {
	conflict := fmt.Errorf("write endpoint ep at revision 3: %w", endpointkv.ErrConflict)
	other := errors.New("nats: timeout")
	tests := []struct {
		name      string
		results   []error // attempt n returns results[n-1]; past the end, a conflict
		wantCalls int
		wantErr   error
		// minWait is the least the waits between attempts add up to: half of
		// 1, 2, 4, ... ms, capped at 50 ms.
		minWait time.Duration
	}{
		{name: "success at once", results: []error{nil}, wantCalls: 1},
		{name: "another error at once", results: []error{other}, wantCalls: 1, wantErr: other},
		{name: "success after three conflicts", results: []error{conflict, conflict, conflict, nil}, wantCalls: 4,
			minWait: (1 + 2 + 4) * time.Millisecond / 2},
		{name: "another error after a conflict", results: []error{conflict, other}, wantCalls: 2, wantErr: other},
		{name: "the conflict limit", wantCalls: endpointkv.MaxConflicts, wantErr: endpointkv.ErrConflictLimit,
			minWait: (1 + 2 + 4 + 8 + 16 + 32 + 50*(endpointkv.MaxConflicts-7)) * time.Millisecond / 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			start := time.Now()
			err := endpointkv.RetryConflicts(context.Background(), func() error {
				calls++
				if calls <= len(tc.results) {
					return tc.results[calls-1]
				}
				return conflict
			})
			waited := time.Since(start)
			if calls != tc.wantCalls {
				t.Errorf("%d attempts, want %d", calls, tc.wantCalls)
			}
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error = %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == endpointkv.ErrConflictLimit && !errors.Is(err, endpointkv.ErrConflict) {
				t.Errorf("error = %v, want it to wrap the last conflict too", err)
			}
			if waited < tc.minWait {
				t.Errorf("the attempts took %s, want at least %s of backoff", waited, tc.minWait)
			}
		})
	}
	t.Run("a context that ends stops the wait", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		calls := 0
		err := endpointkv.RetryConflicts(ctx, func() error {
			calls++
			if calls == 3 {
				cancel()
			}
			return conflict
		})
		if !errors.Is(err, context.Canceled) || calls != 3 {
			t.Errorf("after cancel: error %v after %d attempts, want context.Canceled after 3", err, calls)
		}
	})
}

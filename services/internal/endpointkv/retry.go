package endpointkv

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// MaxConflicts is how many compare-and-set conflicts in a row RetryConflicts
// (and so Update) tolerates before it gives up with ErrConflictLimit.
const MaxConflicts = 100

// Backoff after a conflict: it starts at minBackoff and doubles up to
// maxBackoff; each wait is between half and all of it, at random.
const (
	minBackoff = time.Millisecond
	maxBackoff = 50 * time.Millisecond
)

// RetryConflicts runs attempt until it returns anything but an error
// wrapping ErrConflict, and returns that (nil included). attempt re-reads
// whatever it compares and sets on. After each conflict it waits a short,
// growing, jittered time, so that writers racing for one record spread out
// instead of colliding again at once. After MaxConflicts conflicts in a row
// it returns an error wrapping both ErrConflictLimit and the last conflict;
// when ctx ends while it waits, ctx's error.
func RetryConflicts(ctx context.Context, attempt func() error) error {
	d := minBackoff
	for n := 1; ; n++ {
		err := attempt()
		if !errors.Is(err, ErrConflict) {
			return err
		}
		if n >= MaxConflicts {
			return fmt.Errorf("%w (%d in a row): %w", ErrConflictLimit, n, err)
		}
		t := time.NewTimer(d/2 + rand.N(d/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		d = min(2*d, maxBackoff)
	}
}

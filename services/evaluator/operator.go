package evaluator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/endpointkv"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

// ErrUnknownEndpoint is returned by Operate for an endpoint without a record.
var ErrUnknownEndpoint = errors.New("unknown endpoint")

// OperatorResult is what an operator command did.
type OperatorResult struct {
	// State is the record after the command.
	State events.EndpointState
	// Change is what changed (nothing when the endpoint already was as the
	// command asks).
	Change state.Change
}

// Operate applies an operator command (switchboard endpoint
// drain|undrain|open|close|reset) to endpoint name's record by
// compare-and-set, and publishes the status change with CloudEvent source
// (e.g. "/operator/alice") like the evaluator would: pending in the record
// until published. An endpoint without a record is ErrUnknownEndpoint,
// naming the endpoints there are.
func Operate(ctx context.Context, js jetstream.JetStream, s state.Settings, name string, cmd state.Command, reason, source string, log *slog.Logger) (OperatorResult, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	store, err := endpointkv.Open(ctx, js)
	if err != nil {
		return OperatorResult{}, err
	}
	status, err := js.Stream(ctx, events.StreamStatus)
	if err != nil {
		return OperatorResult{}, fmt.Errorf("stream %s: %w", events.StreamStatus, err)
	}
	m, _ := newMetrics(nil)
	c := newCommitter(store, status, natsx.Publisher{JS: js, Source: source}, log, m)
	c.checkBucket(ctx)
	sig := state.Signal{Kind: state.SignalOperator, Operator: cmd, Reason: reason, Source: source}
	var res OperatorResult
	err = endpointkv.RetryConflicts(ctx, func() error {
		cur, err := store.Get(ctx, name)
		if errors.Is(err, endpointkv.ErrNotFound) {
			return unknownEndpoint(ctx, store, name)
		}
		if err != nil {
			return err
		}
		now := clock(cur, time.Now(), time.Now())
		next, ch := state.Apply(s, cur, sig, now)
		if !ch.Write {
			res = OperatorResult{State: cur, Change: ch}
			return nil
		}
		w, err := c.commit(ctx, cur, next, ch, now)
		if err != nil {
			return err
		}
		res = OperatorResult{State: w, Change: ch}
		return nil
	})
	switch {
	case errors.Is(err, ErrUnknownEndpoint):
		return OperatorResult{}, err
	case err != nil:
		return OperatorResult{}, fmt.Errorf("%s endpoint %s: %w", cmd, name, err)
	case !res.Change.Write:
		return res, nil
	}
	if n := len(res.State.Pending); n > 0 && res.State.Pending[n-1].Revision > c.knownPublished(name) {
		return res, fmt.Errorf("%s endpoint %s: written, but the status change is not published yet (an evaluator will publish it)", cmd, name)
	}
	res.State = c.tidy(ctx, res.State)
	return res, nil
}

func unknownEndpoint(ctx context.Context, store *endpointkv.Store, name string) error {
	all, err := store.List(ctx)
	if err != nil {
		return fmt.Errorf("%w %q (and listing the known ones failed: %v)", ErrUnknownEndpoint, name, err)
	}
	names := make([]string, 0, len(all))
	for _, st := range all {
		names = append(names, st.Endpoint)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return fmt.Errorf("%w %q: there are no endpoint records at all (is an evaluator running?)", ErrUnknownEndpoint, name)
	}
	return fmt.Errorf("%w %q: known endpoints are %s", ErrUnknownEndpoint, name, strings.Join(names, ", "))
}

package gateway

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
)

// brokenWriter is a response writer whose flushes fail, like one whose
// client went away.
type brokenWriter struct {
	*httptest.ResponseRecorder
}

var errFlush = errors.New("client gone")

func (brokenWriter) FlushError() error { return errFlush }

// TestStatusWriterPassesFlushErrors: a flush through the instrumentation
// wrapper reports the wrapped writer's error, so a stream notices a client
// that went away.
func TestStatusWriterPassesFlushErrors(t *testing.T) {
	tests := []struct {
		name string
		w    http.ResponseWriter
		want error
	}{
		{name: "failing flush", w: brokenWriter{httptest.NewRecorder()}, want: errFlush},
		{name: "working flush", w: httptest.NewRecorder(), want: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sw := &statusWriter{ResponseWriter: tc.w}
			if err := http.NewResponseController(sw).Flush(); !errors.Is(err, tc.want) {
				t.Errorf("Flush() = %v, want %v", err, tc.want)
			}
			if sw.code != http.StatusOK {
				t.Errorf("status %d after a flush, want 200", sw.code)
			}
		})
	}
}

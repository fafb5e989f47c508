// Package upstream is what the prober and the workers share about calling an
// OpenAI-compatible endpoint: a tuned HTTP client, the classification of a
// failed call into an events.ErrorClass, and reading when a 429 ends.
package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/switchboard-llm/switchboard/events"
)

// NewClient returns an HTTP client for endpoint calls: keep-alive pools
// sized for many concurrent calls per endpoint, no overall timeout (callers
// bound each call with a context), HTTP/2 where the endpoint offers it.
func NewClient(maxIdlePerHost int) *http.Client {
	if maxIdlePerHost <= 0 {
		maxIdlePerHost = 64
	}
	t := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          4 * maxIdlePerHost,
		MaxIdleConnsPerHost:   maxIdlePerHost,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &http.Client{Transport: t}
}

// Classify says why a call failed before an HTTP status arrived (or while
// its body was read). callerCtx is the caller's own context: when it ended,
// the failure is the caller's (caller_canceled), never the endpoint's, even if
// the error looks like a timeout. An error from a per-call deadline that the
// caller did not set is a timeout of the endpoint.
func Classify(callerCtx context.Context, err error) events.ErrorClass {
	if err == nil {
		return events.ClassNone
	}
	if callerCtx != nil && callerCtx.Err() != nil {
		return events.ClassCallerCanceled
	}
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var recErr tls.RecordHeaderError
	var unkAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invErr x509.CertificateInvalidError
	var netErr net.Error
	switch {
	case errors.As(err, &dnsErr):
		if dnsErr.IsTimeout {
			return events.ClassTimeout
		}
		return events.ClassDNS
	case errors.As(err, &certErr), errors.As(err, &recErr), errors.As(err, &unkAuth),
		errors.As(err, &hostErr), errors.As(err, &invErr), strings.Contains(err.Error(), "tls: "):
		return events.ClassTLS
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return events.ClassTimeout
	case errors.As(err, &netErr) && netErr.Timeout():
		return events.ClassTimeout
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, syscall.EPIPE), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return events.ClassConnect
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return events.ClassConnect
	}
	return events.ClassConnect
}

// ThrottledUntil reads when a 429 ends: Retry-After (seconds or an HTTP
// date), retry-after-ms, OpenAI's x-ratelimit-reset-requests/-tokens
// ("1s", "6m0s", "20ms"), or a hint in the body ("Please try again in 20s",
// "try again in 1.5s", "retry after 3 seconds"). It reports false when
// nothing says; the caller picks a default.
func ThrottledUntil(h http.Header, body []byte, now time.Time) (time.Time, bool) {
	var best time.Duration
	found := false
	take := func(d time.Duration) {
		if d > 0 && (!found || d > best) {
			best, found = d, true
		}
	}
	if v := strings.TrimSpace(h.Get("Retry-After")); v != "" {
		if d, err := time.ParseDuration(v + "s"); err == nil {
			take(d)
		} else if t, err := http.ParseTime(v); err == nil {
			take(t.Sub(now))
		}
	}
	if v := strings.TrimSpace(h.Get("Retry-After-Ms")); v != "" {
		if d, err := time.ParseDuration(v + "ms"); err == nil {
			take(d)
		}
	}
	for _, k := range []string{"X-Ratelimit-Reset-Requests", "X-Ratelimit-Reset-Tokens"} {
		if v := strings.TrimSpace(h.Get(k)); v != "" {
			if d, err := time.ParseDuration(v); err == nil {
				take(d)
			}
		}
	}
	if !found {
		if d, ok := bodyHint(body); ok {
			take(d)
		}
	}
	if !found {
		return time.Time{}, false
	}
	const maxThrottle = time.Hour
	return now.Add(min(best, maxThrottle)), true
}

// bodyHint finds "try again in 20s", "try again in 1.5 seconds", "retry
// after 3 seconds" in an error body.
func bodyHint(body []byte) (time.Duration, bool) {
	if len(body) == 0 {
		return 0, false
	}
	s := strings.ToLower(string(body[:min(len(body), 4096)]))
	for _, marker := range []string{"try again in ", "retry after ", "retry in "} {
		i := strings.Index(s, marker)
		if i < 0 {
			continue
		}
		rest := s[i+len(marker):]
		j := 0
		for j < len(rest) && (rest[j] >= '0' && rest[j] <= '9' || rest[j] == '.') {
			j++
		}
		if j == 0 {
			continue
		}
		num := rest[:j]
		unit := strings.TrimLeft(rest[j:], " ")
		switch {
		case strings.HasPrefix(unit, "ms"), strings.HasPrefix(unit, "millisecond"):
			unit = "ms"
		case strings.HasPrefix(unit, "s"):
			unit = "s"
		case strings.HasPrefix(unit, "m"):
			unit = "m"
		case strings.HasPrefix(unit, "h"):
			unit = "h"
		default:
			unit = "s"
		}
		if d, err := time.ParseDuration(num + unit); err == nil && d > 0 {
			return d, true
		}
	}
	return 0, false
}

// Redact removes every secret from s, so that an error or a body quoted in
// an event never carries an API key.
func Redact(s string, secrets ...string) string {
	for _, sec := range secrets {
		if len(sec) >= 4 {
			s = strings.ReplaceAll(s, sec, "[redacted]")
		}
	}
	return s
}

// Truncate shortens a message to at most n bytes for an event or a log.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// EventStatus is the HTTP status an event may carry: the contract allows
// 100-599, and Go's client accepts any three digits, so anything else is
// left out (0).
func EventStatus(code int) int {
	if code < 100 || code > 599 {
		return 0
	}
	return code
}

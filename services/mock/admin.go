package mock

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
)

// maxAdminBody bounds an admin request body.
const maxAdminBody = 1 << 20

// serveAdmin serves /_mock/. It is never subject to faults, so an endpoint
// can always be brought back up, but it does require the API key if one is set.
func (s *Server) serveAdmin(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(w, r) {
		return
	}
	path := strings.TrimSuffix(r.URL.Path, "/")
	var allow string
	switch path {
	case "/_mock/faults":
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			s.writeAdmin(w, s.Faults())
			return
		case http.MethodPut:
			s.changeFaults(w, r, func(f *Faults) error {
				*f = Faults{}
				return decodeStrict(r.Body, f)
			})
			return
		case http.MethodPatch:
			s.changeFaults(w, r, func(f *Faults) error { return decodeStrict(r.Body, f) })
			return
		}
		allow = "GET, PUT, PATCH"
	case "/_mock/stats":
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			s.writeAdmin(w, s.Stats())
			return
		}
		allow = "GET"
	case "/_mock/down", "/_mock/up":
		if r.Method == http.MethodPost {
			down := path == "/_mock/down"
			s.changeFaults(w, r, func(f *Faults) error { f.Down = down; return nil })
			return
		}
		allow = "POST"
	default:
		s.writeError(w, http.StatusNotFound,
			"Unknown admin URL "+r.URL.Path+": use /_mock/faults (GET, PUT, PATCH), /_mock/stats (GET), /_mock/down or /_mock/up (POST).",
			"invalid_request_error", "", "unknown_url")
		return
	}
	w.Header().Set("Allow", allow)
	s.writeError(w, http.StatusMethodNotAllowed, "Method "+r.Method+" is not allowed on "+path+"; allowed: "+allow+".",
		"invalid_request_error", "", "method_not_allowed")
}

// changeFaults applies change to the current faults and answers with the
// result, or 400 with the reason.
func (s *Server) changeFaults(w http.ResponseWriter, r *http.Request, change func(*Faults) error) {
	f, err := s.updateFaults(change)
	if err != nil {
		s.writeError(w, http.StatusBadRequest, err.Error(), "invalid_request_error", "", "invalid_faults")
		return
	}
	s.log.Info("faults changed", slog.String("endpoint", s.cfg.Name), slog.String("by", r.Method+" "+r.URL.Path))
	s.writeAdmin(w, f)
}

func (s *Server) writeAdmin(w http.ResponseWriter, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil { // cannot happen for Faults and Stats
		s.writeError(w, http.StatusInternalServerError, err.Error(), "server_error", "", "")
		return
	}
	s.writeJSON(w, http.StatusOK, append(b, '\n'))
}

// decodeStrict decodes one JSON value into v, rejecting unknown fields and
// trailing data.
func decodeStrict(body io.Reader, v any) error {
	data, err := io.ReadAll(io.LimitReader(body, maxAdminBody+1))
	if err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	if len(data) > maxAdminBody {
		return fmt.Errorf("body is larger than %d bytes", maxAdminBody)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("body is empty: want a JSON object of faults")
		}
		return fmt.Errorf("bad faults JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("bad faults JSON: trailing data after the object")
	}
	return nil
}

package gateway

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
)

// OpenAI error types the gateway answers with.
const (
	typeInvalidRequest = "invalid_request_error"
	typeAuthentication = "authentication_error"
	typeNotFound       = "not_found_error"
	typeConflict       = "conflict_error"
	typeServer         = "server_error"
	typeUnavailable    = "service_unavailable"
)

// Error is a refusal with the HTTP status and the OpenAI-style error body it
// is answered with. Parser returns it for every bad job request.
type Error struct {
	Status  int
	Type    string
	Code    string
	Param   string
	Message string
}

// Error returns the message, which names what was refused and why.
func (e *Error) Error() string { return e.Message }

// badRequest is a 400 invalid_request_error.
func badRequest(param, code, format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Type: typeInvalidRequest, Param: param, Code: code,
		Message: fmt.Sprintf(format, args...)}
}

// errorJSON is the wire form of Error.
type errorJSON struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// body is the OpenAI-style JSON of e.
func (e *Error) body() []byte {
	b, _ := json.Marshal(errorJSON{Error: errorDetail{
		Message: e.Message, Type: e.Type, Param: nullable(e.Param), Code: nullable(e.Code),
	}})
	return append(b, '\n')
}

// writeError answers with e.
func writeError(w http.ResponseWriter, e *Error) {
	b := e.body()
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(e.Status)
	w.Write(b)
}

// writeJSON answers with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, &Error{Status: http.StatusInternalServerError, Type: typeServer, Code: "internal_error",
			Message: "encode response: " + err.Error()})
		return
	}
	b = append(b, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

// Package schemas holds the JSON Schemas (draft 2020-12) of every Switchboard
// event's data and of the job request, embedded in the binary. Each schema's
// $id is the dataschema URI its event carries (events.DataSchema).
//
// The gateway validates job requests with it; the evaluator and tests validate
// events with it (events.Decoder{Schema: schemas.Validate}).
package schemas

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

//go:embed *.json
var files embed.FS

// Base is the URI prefix of every schema $id.
const Base = "https://schemas.switchboard.dev/"

// JobRequest is the $id of the POST /v1/jobs body schema.
const JobRequest = Base + "chat.job.request.v1.json"

// EndpointState is the $id of the KV endpoint record schema.
const EndpointState = Base + "switchboard.endpoint.state.v1.json"

// JobRecord is the $id of the KV job record schema.
const JobRecord = Base + "switchboard.chat.job.record.v1.json"

var printer = message.NewPrinter(language.English)

var (
	once     sync.Once
	compiled map[string]*jsonschema.Schema
	loadErr  error
)

func load() {
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	var ids []string
	loadErr = fs.WalkDir(files, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := files.ReadFile(path)
		if err != nil {
			return err
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			return fmt.Errorf("schema %s: %w", path, err)
		}
		id := Base + path
		if err := c.AddResource(id, doc); err != nil {
			return fmt.Errorf("schema %s: %w", path, err)
		}
		ids = append(ids, id)
		return nil
	})
	if loadErr != nil {
		return
	}
	compiled = make(map[string]*jsonschema.Schema, len(ids))
	for _, id := range ids {
		s, err := c.Compile(id)
		if err != nil {
			loadErr = fmt.Errorf("compile schema %s: %w", id, err)
			return
		}
		compiled[id] = s
	}
}

// ErrUnknownSchema is returned for a schema id that is not embedded.
var ErrUnknownSchema = errors.New("unknown schema")

// Validate checks a JSON document against the schema with the given $id and
// returns an error listing every violation with its JSON pointer.
func Validate(id string, doc []byte) error {
	once.Do(load)
	if loadErr != nil {
		return loadErr
	}
	s, ok := compiled[id]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownSchema, id)
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return fmt.Errorf("not valid JSON: %w", err)
	}
	return ValidateValue(s, v)
}

// ValidateValue validates an already-decoded JSON value (decoded with
// jsonschema.UnmarshalJSON, so that numbers keep their precision).
func ValidateValue(s *jsonschema.Schema, v any) error {
	err := s.Validate(v)
	if err == nil {
		return nil
	}
	var ve *jsonschema.ValidationError
	if errors.As(err, &ve) {
		return &Error{Violations: flatten(ve)}
	}
	return err
}

// IDs lists the $id of every embedded schema.
func IDs() []string {
	once.Do(load)
	ids := make([]string, 0, len(compiled))
	for id := range compiled {
		ids = append(ids, id)
	}
	return ids
}

// Error is a schema validation failure.
type Error struct {
	// Violations are "<json pointer>: <message>" lines, most specific first.
	Violations []string
}

func (e *Error) Error() string {
	return "schema: " + strings.Join(e.Violations, "; ")
}

// flatten turns the validation error tree into one line per leaf.
func flatten(ve *jsonschema.ValidationError) []string {
	var out []string
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) == 0 {
			loc := "/" + strings.Join(e.InstanceLocation, "/")
			out = append(out, fmt.Sprintf("%s: %s", loc, e.ErrorKind.LocalizedString(printer)))
			return
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(ve)
	return out
}

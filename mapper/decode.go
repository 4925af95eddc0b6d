package mapper

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"reflect"
	"slices"
	"strings"
)

// maxBody caps request bodies; a batch of a few thousand endpoints fits.
const maxBody = 8 << 20

var (
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
)

// decodeRequest decodes exactly one JSON value from r into v, strictly: an
// unknown field, a wrong type or trailing data is an error that names the
// field (as "ports[1].port") and what was expected.
func decodeRequest(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.UseNumber()
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.Is(err, io.EOF):
			return invalid("body", "empty; expected a JSON object")
		case errors.As(err, &mbe):
			return invalid("body", "larger than %d bytes", maxBody)
		}
		return invalid("body", "malformed JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return invalid("body", "unexpected data after the JSON value")
	}
	return decodeValue("", raw, reflect.ValueOf(v).Elem())
}

// MaxBatch is how many endpoints one batch may create.
const MaxBatch = 10000

// DecodeBatch reads endpoints to create in one batch: a JSON array of
// EndpointSpec, or the body of POST /v1/endpoints/batch, as strictly as
// the API does (an unknown field or a wrong type is an error naming it,
// as "endpoints[2].ports[0].port").
func DecodeBatch(r io.Reader) ([]EndpointSpec, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxBody+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxBody {
		return nil, invalid("body", "larger than %d bytes", maxBody)
	}
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '[' {
		b = append(append([]byte(`{"endpoints":`), t...), '}')
	}
	var req BatchRequest
	if err := decodeRequest(bytes.NewReader(b), &req); err != nil {
		return nil, err
	}
	return req.Endpoints, checkBatch(req.Endpoints)
}

func checkBatch(specs []EndpointSpec) error {
	switch {
	case len(specs) == 0:
		return invalid("endpoints", "empty; want at least one endpoint")
	case len(specs) > MaxBatch:
		return invalid("endpoints", "%d endpoints; a batch holds at most %d", len(specs), MaxBatch)
	}
	return nil
}

func decodeValue(path string, raw json.RawMessage, v reflect.Value) error {
	t := v.Type()
	custom := reflect.PointerTo(t).Implements(textUnmarshaler) || reflect.PointerTo(t).Implements(jsonUnmarshaler)
	switch {
	case !custom && t.Kind() == reflect.Pointer:
		// An optional field (NetworkUpdate): null or absent leaves it
		// nil; anything else is decoded as strictly as its element.
		if string(raw) == "null" {
			return nil
		}
		p := reflect.New(t.Elem())
		if err := decodeValue(path, raw, p.Elem()); err != nil {
			return err
		}
		v.Set(p)
		return nil
	case !custom && t.Kind() == reflect.Struct:
		if string(raw) == "null" {
			return nil
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			return invalid(orBody(path), "expected an object, got %s", jsonKind(raw))
		}
		fields := map[string]int{}
		for i := 0; i < t.NumField(); i++ {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
			if name != "" && name != "-" {
				fields[name] = i
			}
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			i, ok := fields[k]
			if !ok {
				return invalid(join(path, k), "unknown field")
			}
			if err := decodeValue(join(path, k), m[k], v.Field(i)); err != nil {
				return err
			}
		}
		return nil
	case !custom && t.Kind() == reflect.Slice && (t.Elem().Kind() == reflect.Struct || reflect.PointerTo(t.Elem()).Implements(textUnmarshaler)):
		if string(raw) == "null" {
			return nil
		}
		var arr []json.RawMessage
		if err := json.Unmarshal(raw, &arr); err != nil {
			return invalid(orBody(path), "expected an array, got %s", jsonKind(raw))
		}
		s := reflect.MakeSlice(t, len(arr), len(arr))
		for i := range arr {
			if err := decodeValue(fmt.Sprintf("%s[%d]", path, i), arr[i], s.Index(i)); err != nil {
				return err
			}
		}
		v.Set(s)
		return nil
	}
	if err := json.Unmarshal(raw, v.Addr().Interface()); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return invalid(orBody(path), "expected %s, got %s", describe(t), te.Value)
		}
		if reflect.PointerTo(t).Implements(textUnmarshaler) {
			return invalid(orBody(path), "%s is not %s: %v", raw, describe(t), err)
		}
		return invalid(orBody(path), "%v", err)
	}
	return nil
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func orBody(path string) string {
	if path == "" {
		return "body"
	}
	return path
}

func jsonKind(raw json.RawMessage) string {
	s := strings.TrimSpace(string(raw))
	if s == "" {
		return "nothing"
	}
	switch s[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

func describe(t reflect.Type) string {
	switch t {
	case reflect.TypeFor[netip.Addr]():
		return "an IP address string"
	case reflect.TypeFor[netip.Prefix]():
		return "a CIDR string"
	case reflect.TypeFor[MAC]():
		return "a MAC address string"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Uint16:
		return "a whole number from 0 to 65535"
	case reflect.Uint32:
		return "a whole number from 0 to 4294967295"
	case reflect.Int64:
		return "a whole number"
	case reflect.Slice:
		return "an array of " + strings.TrimPrefix(describe(t.Elem()), "a ") + "s"
	case reflect.Bool:
		return "true or false"
	}
	return t.String()
}

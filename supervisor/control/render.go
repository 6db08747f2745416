package control

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// FormatStatus writes the status JSON for people, whatever its shape:
// scalars as "key: value" lines in the order the supervisor wrote them,
// nested objects as indented sections, lists of objects as tables. It is
// the `lifeboat status` view; --json prints the raw JSON instead.
func FormatStatus(w io.Writer, raw []byte) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	v, err := decodeOrdered(dec)
	if err != nil {
		return fmt.Errorf("status is not valid JSON: %w", err)
	}
	var buf bytes.Buffer
	if _, ok := v.(*object); ok {
		renderValue(&buf, "", v, 0)
	} else {
		renderValue(&buf, "status", v, 0)
	}
	_, err = w.Write(buf.Bytes())
	return err
}

// object keeps JSON object keys in the order they came.
type object struct {
	keys []string
	vals map[string]any
}

func decodeOrdered(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			o := &object{vals: map[string]any{}}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, _ := kt.(string)
				v, err := decodeOrdered(dec)
				if err != nil {
					return nil, err
				}
				if _, dup := o.vals[k]; !dup {
					o.keys = append(o.keys, k)
				}
				o.vals[k] = v
			}
			_, err := dec.Token() // '}'
			return o, err
		case '[':
			var a []any
			for dec.More() {
				v, err := decodeOrdered(dec)
				if err != nil {
					return nil, err
				}
				a = append(a, v)
			}
			_, err := dec.Token() // ']'
			return a, err
		}
	}
	return tok, nil
}

func renderValue(buf *bytes.Buffer, key string, v any, depth int) {
	ind := strings.Repeat("  ", depth)
	switch t := v.(type) {
	case *object:
		if key != "" {
			fmt.Fprintf(buf, "%s%s:\n", ind, key)
			depth++
		}
		renderObject(buf, t, depth)
	case []any:
		if rows, ok := tableRows(t); ok {
			fmt.Fprintf(buf, "%s%s:\n", ind, key)
			renderTable(buf, rows, depth+1)
			return
		}
		fmt.Fprintf(buf, "%s%s: %s\n", ind, key, scalarList(t))
	default:
		fmt.Fprintf(buf, "%s%s: %s\n", ind, key, scalar(v))
	}
}

// renderObject aligns the scalar fields of one object and puts nested
// objects and tables after each run of scalars, keeping the order.
func renderObject(buf *bytes.Buffer, o *object, depth int) {
	ind := strings.Repeat("  ", depth)
	tw := tabwriter.NewWriter(buf, 0, 0, 2, ' ', 0)
	flush := func() { tw.Flush() }
	for _, k := range o.keys {
		v := o.vals[k]
		switch t := v.(type) {
		case *object:
			flush()
			renderValue(buf, k, t, depth)
		case []any:
			if _, ok := tableRows(t); ok {
				flush()
				renderValue(buf, k, t, depth)
				continue
			}
			fmt.Fprintf(tw, "%s%s:\t%s\n", ind, k, scalarList(t))
		default:
			fmt.Fprintf(tw, "%s%s:\t%s\n", ind, k, scalar(v))
		}
	}
	flush()
}

// tableRows reports whether a list is all objects (and not empty).
func tableRows(a []any) ([]*object, bool) {
	if len(a) == 0 {
		return nil, false
	}
	rows := make([]*object, len(a))
	for i, x := range a {
		o, ok := x.(*object)
		if !ok {
			return nil, false
		}
		rows[i] = o
	}
	return rows, true
}

// renderTable prints rows with the union of their keys as columns, in
// order of first appearance; nested values are shown compactly.
func renderTable(buf *bytes.Buffer, rows []*object, depth int) {
	ind := strings.Repeat("  ", depth)
	var cols []string
	seen := map[string]bool{}
	for _, r := range rows {
		for _, k := range r.keys {
			if !seen[k] {
				seen[k] = true
				cols = append(cols, k)
			}
		}
	}
	tw := tabwriter.NewWriter(buf, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "%s%s\n", ind, strings.ToUpper(strings.Join(cols, "\t")))
	for _, r := range rows {
		cells := make([]string, len(cols))
		for i, c := range cols {
			if v, ok := r.vals[c]; ok {
				cells[i] = compact(v)
			} else {
				cells[i] = "-"
			}
		}
		fmt.Fprintf(tw, "%s%s\n", ind, strings.Join(cells, "\t"))
	}
	tw.Flush()
}

// scalarList renders a list that is not a table on one line.
func scalarList(a []any) string {
	if len(a) == 0 {
		return "-"
	}
	parts := make([]string, len(a))
	for i, x := range a {
		parts[i] = scalar(x)
	}
	return strings.Join(parts, ", ")
}

func scalar(v any) string {
	switch t := v.(type) {
	case []any:
		if len(t) == 0 {
			return "-"
		}
	case nil:
		return "-"
	case string:
		if t == "" {
			return "-"
		}
		// Keep one field on one line.
		return strings.ReplaceAll(t, "\n", " ")
	case bool:
		if t {
			return "yes"
		}
		return "no"
	case json.Number:
		return t.String()
	}
	return compact(v)
}

// compact renders a nested value on one line: k=v pairs or a list.
func compact(v any) string {
	switch t := v.(type) {
	case *object:
		parts := make([]string, len(t.keys))
		for i, k := range t.keys {
			parts[i] = k + "=" + compact(t.vals[k])
		}
		return strings.Join(parts, " ")
	case []any:
		parts := make([]string, len(t))
		for i, x := range t {
			parts[i] = compact(x)
		}
		return strings.Join(parts, ",")
	}
	return scalar(v)
}

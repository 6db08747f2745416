package snapshot

import (
	"fmt"
	"sort"
	"time"
)

// KeepPolicy says which snapshots retention keeps, with restic's semantics:
// for each bucket with a count N, the newest snapshot of each of the N most
// recent periods (hours, days, ISO weeks, months, years) that hold a
// snapshot; Last keeps the N newest snapshots. A snapshot kept by any
// bucket is kept. All zero keeps everything.
type KeepPolicy struct {
	Last    int
	Hourly  int
	Daily   int
	Weekly  int
	Monthly int
	Yearly  int
	// Location is the time zone periods are cut in; nil means UTC (a
	// container's clock rarely has another zone, and UTC keeps the buckets
	// the same on every host writing to the repository).
	Location *time.Location
}

// Empty reports whether the policy keeps everything.
func (p KeepPolicy) Empty() bool {
	return p.Last == 0 && p.Hourly == 0 && p.Daily == 0 && p.Weekly == 0 && p.Monthly == 0 && p.Yearly == 0
}

// Validate rejects negative counts.
func (p KeepPolicy) Validate() error {
	for _, b := range p.buckets() {
		if b.count < 0 {
			return fmt.Errorf("keep %s = %d: must be 0 or more", b.name, b.count)
		}
	}
	return nil
}

func (p KeepPolicy) String() string {
	return fmt.Sprintf("last=%d hourly=%d daily=%d weekly=%d monthly=%d yearly=%d", p.Last, p.Hourly, p.Daily, p.Weekly, p.Monthly, p.Yearly)
}

// bucket is one kind of period and how many of them to keep.
type bucket struct {
	name   string
	count  int
	period func(t time.Time) string // "" never equals another snapshot's
}

func (p KeepPolicy) buckets() []bucket {
	return []bucket{
		{"last", p.Last, nil}, // every snapshot is its own period
		{"hourly", p.Hourly, func(t time.Time) string { return t.Format("2006-01-02T15") }},
		{"daily", p.Daily, func(t time.Time) string { return t.Format("2006-01-02") }},
		{"weekly", p.Weekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%04d-W%02d", y, w) }},
		{"monthly", p.Monthly, func(t time.Time) string { return t.Format("2006-01") }},
		{"yearly", p.Yearly, func(t time.Time) string { return t.Format("2006") }},
	}
}

// Decision is retention's verdict on one snapshot.
type Decision struct {
	Snapshot *Manifest
	Keep     bool
	// Reasons name the buckets that keep it ("daily", "latest", ...);
	// empty when it is forgotten.
	Reasons []string
}

// ApplyPolicy decides, for every snapshot in list, whether p keeps it. It is
// a pure function of the snapshots' times and fencing tokens. Besides the
// buckets, the snapshot Latest picks (what a restore of "latest" would use)
// is always kept, so retention never takes away the snapshot a new replica
// restores. Decisions come newest first.
func ApplyPolicy(list []*Manifest, p KeepPolicy) []Decision {
	loc := p.Location
	if loc == nil {
		loc = time.UTC
	}
	sorted := append([]*Manifest(nil), list...)
	// Newest first; ties broken by id so the result never depends on the
	// listing order.
	sort.SliceStable(sorted, func(i, j int) bool {
		if !sorted[i].Time.Equal(sorted[j].Time) {
			return sorted[i].Time.After(sorted[j].Time)
		}
		return sorted[i].ID > sorted[j].ID
	})
	out := make([]Decision, len(sorted))
	for i, m := range sorted {
		out[i].Snapshot = m
	}
	if p.Empty() {
		for i := range out {
			out[i].Keep, out[i].Reasons = true, []string{"no keep policy"}
		}
		return out
	}
	for _, b := range p.buckets() {
		left := b.count
		last, seen := "", false
		for i, m := range sorted {
			if left <= 0 {
				break
			}
			if b.period != nil {
				key := b.period(m.Time.In(loc))
				if seen && key == last {
					continue // an older snapshot of a period already kept
				}
				last, seen = key, true
			}
			out[i].Keep = true
			out[i].Reasons = append(out[i].Reasons, b.name)
			left--
		}
	}
	if l := Latest(sorted); l != nil {
		for i := range out {
			if out[i].Snapshot == l {
				out[i].Keep = true
				out[i].Reasons = append(out[i].Reasons, "latest")
			}
		}
	}
	return out
}

package snapshot

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// snaps makes manifests at the given times ("2006-01-02 15:04"), ids s0, s1, ...
func snaps(t *testing.T, times ...string) []*Manifest {
	t.Helper()
	var out []*Manifest
	for i, s := range times {
		tm, err := time.Parse("2006-01-02 15:04", s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, &Manifest{ID: fmt.Sprintf("s%d", i), Time: tm})
	}
	return out
}

func kept(ds []Decision) string {
	var ids []string
	for _, d := range ds {
		if d.Keep {
			ids = append(ids, d.Snapshot.ID+"("+strings.Join(d.Reasons, ",")+")")
		}
	}
	return strings.Join(ids, " ")
}

func TestApplyPolicy(t *testing.T) {
	// A realistic history: several per hour, several hours per day, days
	// across a week and month boundary, and one from an earlier year.
	history := []string{
		"2025-11-14 09:00", // s0
		"2026-01-30 10:00", // s1
		"2026-01-31 23:59", // s2
		"2026-02-01 00:01", // s3
		"2026-02-01 08:10", // s4
		"2026-02-01 08:40", // s5
		"2026-02-01 09:05", // s6
		"2026-02-02 07:00", // s7 (Monday: ISO week 6)
		"2026-02-02 07:30", // s8
		"2026-02-02 11:00", // s9
	}
	cases := []struct {
		name   string
		policy KeepPolicy
		want   string
	}{
		{"zero keeps everything", KeepPolicy{},
			"s9(no keep policy) s8(no keep policy) s7(no keep policy) s6(no keep policy) s5(no keep policy) s4(no keep policy) s3(no keep policy) s2(no keep policy) s1(no keep policy) s0(no keep policy)"},
		{"last 3", KeepPolicy{Last: 3}, "s9(last,latest) s8(last) s7(last)"},
		{"last 1 is the latest", KeepPolicy{Last: 1}, "s9(last,latest)"},
		{"more than there are", KeepPolicy{Last: 50}, "s9(last,latest) s8(last) s7(last) s6(last) s5(last) s4(last) s3(last) s2(last) s1(last) s0(last)"},
		// Hourly: the newest of each of the 4 most recent hours that have a
		// snapshot: 11h on the 2nd, 07h on the 2nd (s8, not s7), 09h and
		// 08h on the 1st (s5, not s4).
		{"hourly 4", KeepPolicy{Hourly: 4}, "s9(hourly,latest) s8(hourly) s6(hourly) s5(hourly)"},
		{"daily 3", KeepPolicy{Daily: 3}, "s9(daily,latest) s6(daily) s2(daily)"},
		// ISO weeks: Monday 2026-02-02 starts week 6; Sunday 2026-02-01 and
		// the end of January are week 5; 2025-11-14 is week 46.
		{"weekly 2", KeepPolicy{Weekly: 2}, "s9(weekly,latest) s6(weekly)"},
		{"weekly 3", KeepPolicy{Weekly: 3}, "s9(weekly,latest) s6(weekly) s0(weekly)"},
		{"monthly 2", KeepPolicy{Monthly: 2}, "s9(monthly,latest) s2(monthly)"},
		{"yearly 5", KeepPolicy{Yearly: 5}, "s9(yearly,latest) s0(yearly)"},
		{"buckets combine", KeepPolicy{Last: 2, Daily: 2, Yearly: 2},
			"s9(last,daily,yearly,latest) s8(last) s6(daily) s0(yearly)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			list := snaps(t, history...)
			ds := ApplyPolicy(list, c.policy)
			if len(ds) != len(list) {
				t.Fatalf("%d decisions for %d snapshots", len(ds), len(list))
			}
			if got := kept(ds); got != c.want {
				t.Errorf("kept\n got %s\nwant %s", got, c.want)
			}
			// The listing order never matters.
			rev := append([]*Manifest(nil), list...)
			for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
				rev[i], rev[j] = rev[j], rev[i]
			}
			if got := kept(ApplyPolicy(rev, c.policy)); got != c.want {
				t.Errorf("reversed input kept %s", got)
			}
		})
	}
}

func TestApplyPolicyTimeZone(t *testing.T) {
	// 23:30 and 00:30 UTC are two days in UTC but one day at UTC+2.
	list := snaps(t, "2026-03-01 23:30", "2026-03-02 00:30")
	if got := kept(ApplyPolicy(list, KeepPolicy{Daily: 2})); got != "s1(daily,latest) s0(daily)" {
		t.Errorf("UTC: %s", got)
	}
	plus2 := time.FixedZone("UTC+2", 2*3600)
	if got := kept(ApplyPolicy(list, KeepPolicy{Daily: 2, Location: plus2})); got != "s1(daily,latest)" {
		t.Errorf("UTC+2: %s", got)
	}
}

func TestApplyPolicyAlwaysKeepsLatest(t *testing.T) {
	// A deposed leader wrote s2 after the current leader's s1: restore of
	// "latest" picks the higher fencing token, so retention must keep it
	// even when keep-last alone would drop it.
	list := snaps(t, "2026-01-01 10:00", "2026-01-01 11:00", "2026-01-01 12:00")
	list[1].FencingToken = 9
	list[2].FencingToken = 3
	if got := kept(ApplyPolicy(list, KeepPolicy{Last: 1})); got != "s2(last) s1(latest)" {
		t.Errorf("kept %s", got)
	}
}

func TestApplyPolicySameTimeIsDeterministic(t *testing.T) {
	list := snaps(t, "2026-01-01 10:00", "2026-01-01 10:00", "2026-01-01 10:00")
	a := kept(ApplyPolicy(list, KeepPolicy{Last: 1}))
	b := kept(ApplyPolicy([]*Manifest{list[2], list[0], list[1]}, KeepPolicy{Last: 1}))
	if a != b || a != "s2(last,latest)" {
		t.Errorf("same-time snapshots: %q vs %q", a, b)
	}
}

func TestKeepPolicyValidate(t *testing.T) {
	if err := (KeepPolicy{Daily: -1}).Validate(); err == nil || !strings.Contains(err.Error(), "keep daily = -1") {
		t.Errorf("negative daily: %v", err)
	}
	if err := (KeepPolicy{Last: 3}).Validate(); err != nil {
		t.Error(err)
	}
	if !reflect.DeepEqual(ApplyPolicy(nil, KeepPolicy{Last: 1}), []Decision{}) {
		t.Error("empty list")
	}
}

package trigger

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is a Triggerer that keeps the requests it gets.
type recorder struct {
	mu   sync.Mutex
	reqs []Request
	at   []time.Time
}

func (r *recorder) Trigger(req Request) *Waiter {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, req)
	r.at = append(r.at, time.Now())
	w := &Waiter{done: make(chan struct{})}
	close(w.done)
	return w
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reqs)
}

func (r *recorder) get() ([]Request, []time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Request(nil), r.reqs...), append([]time.Time(nil), r.at...)
}

func TestParseSchedule(t *testing.T) {
	for _, ok := range []string{"@every 10m", "@every 1h30m", "@hourly", "@daily", "@weekly", "@midnight",
		"*/5 * * * *", "0 3 * * 1-5", "15,45 * * * *", "CRON_TZ=Europe/Berlin 0 2 * * *", " @every 5s "} {
		if err := ParseSchedule(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "* * * *", "*/5 * * * * *", "@every", "@every 0s", "@every -5m", "@every ten",
		"61 * * * *", "@sometimes", "CRON_TZ=Nowhere/Else 0 2 * * *"} {
		err := ParseSchedule(bad)
		if err == nil {
			t.Errorf("%q accepted", bad)
			continue
		}
		if bad != "" && !strings.Contains(err.Error(), strings.TrimSpace(bad)) {
			t.Errorf("%q: error does not name the schedule: %v", bad, err)
		}
	}
}

func TestScheduleFires(t *testing.T) {
	rec := &recorder{}
	s, err := Schedule(context.Background(), "@every 1s", rec, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	if next := time.Until(s.Next()); next <= 0 || next > 1100*time.Millisecond {
		t.Fatalf("next firing in %s", next)
	}
	eventually(t, "two scheduled requests", func() bool { return rec.count() >= 2 })
	s.Stop()
	reqs, at := rec.get()
	for _, r := range reqs {
		if r.Source != SourceSchedule || r.Reason != "schedule @every 1s" {
			t.Fatalf("request %+v", r)
		}
	}
	if gap := at[1].Sub(at[0]); gap < 900*time.Millisecond || gap > 2*time.Second {
		t.Fatalf("requests %s apart for @every 1s", gap)
	}
	n := rec.count()
	if !s.Next().IsZero() {
		t.Fatal("a stopped schedule has a next time")
	}
	s.Stop() // again: no panic
	// A stopped schedule stays quiet past its next firing time.
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if rec.count() != n {
			t.Fatal("the schedule fired after Stop")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestScheduleStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Schedule(ctx, "@hourly", &recorder{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if next := time.Until(s.Next()); next <= 0 || next > time.Hour {
		t.Fatalf("next @hourly in %s", next)
	}
	cancel()
	eventually(t, "the schedule to stop with its context", func() bool { return s.Next().IsZero() })
	if _, err := Schedule(context.Background(), "nonsense", &recorder{}, nil); err == nil {
		t.Fatal("bad spec accepted")
	}
}

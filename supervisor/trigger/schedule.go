package trigger

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/robfig/cron/v3"
)

// Triggerer takes backup requests; *Loop is one.
type Triggerer interface {
	Trigger(req Request) *Waiter
}

var _ Triggerer = (*Loop)(nil)

// scheduleParser reads backup.schedule: five cron fields (minute hour
// day-of-month month day-of-week, no seconds) or a descriptor (@hourly,
// @daily, @every 10m, ...). A leading CRON_TZ=Zone picks the time zone;
// without it lifeboat's local time (TZ) is used.
var scheduleParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseSchedule checks a backup.schedule value; config validation uses
// it, so a schedule that validates is one the scheduler runs. Its errors
// begin with the quoted schedule.
func ParseSchedule(spec string) error {
	_, err := parseSchedule(spec)
	return err
}

func parseSchedule(spec string) (cron.Schedule, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, fmt.Errorf("empty schedule: give a cron expression such as \"*/15 * * * *\" or \"@every 10m\"")
	}
	if d, ok := strings.CutPrefix(spec, "@every "); ok {
		if dur, err := time.ParseDuration(strings.TrimSpace(d)); err == nil && dur <= 0 {
			return nil, fmt.Errorf("%q: the interval must be positive", spec)
		}
	}
	s, err := scheduleParser.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("%q is not a cron expression (5 fields) or descriptor (@hourly, @every 10m): %w", spec, err)
	}
	return s, nil
}

// Scheduler asks for a backup on a cron schedule.
type Scheduler struct {
	spec    string
	c       *cron.Cron
	id      cron.EntryID
	once    sync.Once
	stopCtx func() bool
}

// Schedule asks t for a backup (Source "schedule", Reason "schedule SPEC")
// at every time spec names, until ctx is done or Stop is called. An
// @every interval is rounded down to whole seconds, and is at least 1s.
// A time missed while lifeboat was not running is not made up.
func Schedule(ctx context.Context, spec string, t Triggerer, log *slog.Logger) (*Scheduler, error) {
	sched, err := parseSchedule(spec)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Scheduler{spec: spec, c: cron.New(cron.WithParser(scheduleParser))}
	reason := "schedule " + spec
	s.id = s.c.Schedule(sched, cron.FuncJob(func() {
		log.Info("scheduled backup", "schedule", spec)
		t.Trigger(Request{Source: SourceSchedule, Reason: reason})
	}))
	s.c.Start()
	s.stopCtx = context.AfterFunc(ctx, s.Stop)
	log.Info("backup schedule started", "schedule", spec, "next", s.Next().UTC().Format(time.RFC3339))
	return s, nil
}

// Next is when the schedule fires next; zero once stopped.
func (s *Scheduler) Next() time.Time {
	return s.c.Entry(s.id).Next
}

// Spec is the schedule as given.
func (s *Scheduler) Spec() string { return s.spec }

// Stop stops the schedule and waits for a firing in progress (it only
// queues a request, so this is quick). Safe to call more than once.
func (s *Scheduler) Stop() {
	s.once.Do(func() {
		if s.stopCtx != nil {
			s.stopCtx()
		}
		<-s.c.Stop().Done()
		s.c.Remove(s.id)
	})
}

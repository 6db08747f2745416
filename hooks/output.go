package hooks

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// output captures a hook's stdout and stderr through pipes (the Starter
// needs *os.File stdio) and logs them line by line.
type output struct {
	stdoutW, stderrW *os.File
	readers          []*os.File
	wg               sync.WaitGroup
	done             chan struct{}
}

func startOutput(log *slog.Logger) (*output, error) {
	o := &output{done: make(chan struct{})}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("pipe for stdout: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("pipe for stderr: %w", err)
	}
	o.stdoutW, o.stderrW = outW, errW
	o.readers = []*os.File{outR, errR}
	o.wg.Add(2)
	go o.logLines(outR, "stdout", log)
	go o.logLines(errR, "stderr", log)
	go func() { o.wg.Wait(); close(o.done) }()
	return o, nil
}

// closeWriters drops lifeboat's copies of the write ends once the child
// holds its own, so the readers see EOF when the hook's processes end.
func (o *output) closeWriters() {
	o.stdoutW.Close()
	o.stderrW.Close()
}

// drain waits up to d for the readers to reach EOF, then closes the read
// ends so processes the hook left behind cannot keep the run open.
func (o *output) drain(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-o.done:
	case <-t.C:
	}
	o.close()
}

func (o *output) close() {
	for _, f := range o.readers {
		f.Close() // unblocks a pending Read: pipes are in the poller
	}
	<-o.done
}

func (o *output) logLines(f *os.File, stream string, log *slog.Logger) {
	defer o.wg.Done()
	br := bufio.NewReaderSize(f, maxLine)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			line = bytes.TrimRight(line, "\r\n")
			log.Info("hook output", "stream", stream, "line", string(line))
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return // EOF, or the read end closed by drain
		}
	}
}

package snapshot

import (
	"errors"
	"io"
	"math/bits"
)

// gear is the table of the gear rolling hash: 256 values from splitmix64
// seeded with 0x6c696665626f6174 ("lifeboat"). Part of the format: the same
// table must cut the same chunks.
var gear = func() [256]uint64 {
	var t [256]uint64
	x := uint64(0x6c696665626f6174)
	for i := range t {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		t[i] = z ^ (z >> 31)
	}
	return t
}()

// Chunker cuts a stream into content-defined chunks (FastCDC with
// normalized chunking): a cut happens where the gear hash's top bits are
// zero, with a stricter mask before the average size and a looser one
// after, so sizes cluster around the average and an insertion shifts only
// the chunks around it.
type Chunker struct {
	r             io.Reader
	min, avg, max int
	maskS, maskL  uint64
	buf           []byte
	start, end    int
	eof           bool
}

// NewChunker returns a chunker over r. buf, if large enough (2*max), is used
// as its buffer.
func NewChunker(r io.Reader, p ChunkerParams, buf []byte) *Chunker {
	nbits := bits.Len(uint(p.Avg)) - 1
	top := func(n int) uint64 { return ^uint64(0) << (64 - n) }
	if cap(buf) < 2*p.Max {
		buf = make([]byte, 2*p.Max)
	}
	return &Chunker{r: r, min: p.Min, avg: p.Avg, max: p.Max, maskS: top(nbits + 2), maskL: top(nbits - 2), buf: buf[:cap(buf)]}
}

// Reset starts over on r, keeping the buffer.
func (c *Chunker) Reset(r io.Reader) {
	c.r, c.start, c.end, c.eof = r, 0, 0, false
}

// Next returns the next chunk, valid until the following call, or io.EOF.
func (c *Chunker) Next() ([]byte, error) {
	if err := c.fill(); err != nil {
		return nil, err
	}
	if c.start == c.end {
		return nil, io.EOF
	}
	data := c.buf[c.start:c.end]
	n := cut(data, c.min, c.avg, c.max, c.maskS, c.maskL)
	chunk := data[:n]
	c.start += n
	return chunk, nil
}

// NextKnown returns the next n bytes as the next chunk if known(those
// bytes) says they are one: a chunk of the previous snapshot at this
// offset, whose cut this chunker would make again, because a cut depends
// only on the bytes since the chunk's start. It saves the cut's scan, and
// returns nil without consuming anything when fewer than n bytes remain,
// n is outside the chunk sizes, or known says no.
func (c *Chunker) NextKnown(n int, known func([]byte) bool) ([]byte, error) {
	if n <= c.min || n > c.max {
		return nil, nil
	}
	if err := c.fill(); err != nil {
		return nil, err
	}
	if c.end-c.start < n || !known(c.buf[c.start:c.start+n]) {
		return nil, nil
	}
	chunk := c.buf[c.start : c.start+n]
	c.start += n
	return chunk, nil
}

// fill makes sure at least max bytes are buffered, or all that remain.
func (c *Chunker) fill() error {
	if c.eof || c.end-c.start >= c.max {
		return nil
	}
	if c.start > 0 {
		copy(c.buf, c.buf[c.start:c.end])
		c.end -= c.start
		c.start = 0
	}
	for c.end < len(c.buf) && !c.eof {
		n, err := c.r.Read(c.buf[c.end:])
		c.end += n
		if errors.Is(err, io.EOF) {
			c.eof = true
		} else if err != nil {
			return err
		}
	}
	return nil
}

// cut returns the length of the first chunk of data.
func cut(data []byte, min, avg, max int, maskS, maskL uint64) int {
	n := len(data)
	if n <= min {
		return n
	}
	if n > max {
		n = max
	}
	normal := avg
	if n < normal {
		normal = n
	}
	var fp uint64
	i := min
	for ; i < normal; i++ {
		fp = (fp << 1) + gear[data[i]]
		if fp&maskS == 0 {
			return i + 1
		}
	}
	for ; i < n; i++ {
		fp = (fp << 1) + gear[data[i]]
		if fp&maskL == 0 {
			return i + 1
		}
	}
	return n
}

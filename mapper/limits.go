package mapper

import (
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limits bound what one client may ask of a mapper, so that no client can
// stall the others (docs/security.md). A client is the identity of its
// certificate, or, without client certificates, its address. Zero fields
// are unlimited.
type Limits struct {
	// Rate is the requests per second a client may make on average, and
	// Burst how many it may make at once. A watch counts as one request.
	Rate  float64
	Burst int
	// Watches is how many watch streams a client may hold open at once.
	Watches int
	// ListPage is the most items one list response holds; a longer list
	// comes in pages (docs/api.md).
	ListPage int
}

// DefaultLimits are `daoli mapper`'s: far above what an agent, a plugin or
// an operator's script asks, far below what would let one client starve
// the others.
var DefaultLimits = Limits{Rate: 1000, Burst: 2000, Watches: 16, ListPage: 10000}

// SetLimits makes the API hold every client to l.
func (a *API) SetLimits(l Limits) {
	a.limits.mu.Lock()
	defer a.limits.mu.Unlock()
	a.limits.Limits = l
	a.limits.clients = map[string]*clientUse{}
}

// limiter keeps each client's use of the API.
type limiter struct {
	mu sync.Mutex
	Limits
	clients map[string]*clientUse
}

type clientUse struct {
	rate    *rate.Limiter
	watches int
	seen    time.Time
}

// maxClients is how many clients' use the limiter keeps before it forgets
// those idle long enough to have their whole burst back.
const maxClients = 10000

// client returns the use of the client named key, creating it.
func (l *limiter) client(key string, now time.Time) *clientUse {
	c, ok := l.clients[key]
	if !ok {
		if len(l.clients) >= maxClients {
			l.forget(now)
		}
		c = &clientUse{rate: rate.NewLimiter(rate.Limit(l.Rate), max(l.Burst, 1))}
		if l.Rate == 0 {
			c.rate.SetLimit(rate.Inf)
		}
		l.clients[key] = c
	}
	c.seen = now
	return c
}

// forget drops the clients without a watch that have been idle long
// enough to refill their burst: they start afresh with a full one.
func (l *limiter) forget(now time.Time) {
	full := time.Minute
	if l.Rate > 0 {
		full = max(full, time.Duration(float64(l.Burst)/l.Rate*float64(time.Second)))
	}
	for k, c := range l.clients {
		if c.watches == 0 && now.Sub(c.seen) > full {
			delete(l.clients, k)
		}
	}
}

// clientKey names the client of r: its identity, or its address.
func clientKey(r *http.Request) string {
	if id, ok := identityFrom(r.Context()); ok {
		return id.String()
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// allow takes one request of r's client from its rate, or returns
// ErrTooManyRequests with how long to wait.
func (l *limiter) allow(r *http.Request) (time.Duration, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.Rate == 0 && l.Watches == 0 {
		return 0, nil
	}
	now := time.Now()
	key := clientKey(r)
	c := l.client(key, now)
	res := c.rate.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return d, fmt.Errorf("%w: %s made more than %g requests per second (burst %d); retry in %s",
			ErrTooManyRequests, key, l.Rate, l.Burst, d.Round(time.Millisecond))
	}
	return 0, nil
}

// watch counts a watch stream of r's client open, or returns
// ErrTooManyRequests when it holds the most it may. done counts it closed.
func (l *limiter) watch(r *http.Request) (done func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.Watches == 0 {
		return func() {}, nil
	}
	key := clientKey(r)
	c := l.client(key, time.Now())
	if c.watches >= l.Watches {
		return nil, fmt.Errorf("%w: %s holds %d watch streams, the most a client may; close one first",
			ErrTooManyRequests, key, c.watches)
	}
	c.watches++
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		c.watches--
	}, nil
}

// retryAfter is the Retry-After header's value for a wait of d: whole
// seconds, at least one.
func retryAfter(d time.Duration) string {
	return strconv.Itoa(max(1, int(math.Ceil(d.Seconds()))))
}

// NextHeader, on a list response, is the value of ?after= that asks for
// the next page; a response without it is the list's last page.
const NextHeader = "X-Daoli-Next"

// listPage is a handler's answer that is one page of a list.
type listPage struct {
	items any
	next  string
}

// paginate returns the page of items, sorted by key, that follows the
// request's ?after= cursor, at most ?limit= and the API's ListPage long.
// after parses the cursor into the test of an item that comes after it.
func paginate[T any](a *API, r *http.Request, items []T, key func(T) string, after func(string) (func(T) bool, error)) (listPage, error) {
	q := r.URL.Query()
	a.limits.mu.Lock()
	size := a.limits.ListPage
	a.limits.mu.Unlock()
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return listPage{}, invalid("limit", "%q: want a whole number, 1 or more", s)
		}
		if size == 0 || n < size {
			size = n
		}
	}
	if s := q.Get("after"); s != "" {
		follows, err := after(s)
		if err != nil {
			return listPage{}, err
		}
		i := len(items)
		for j, it := range items {
			if follows(it) {
				i = j
				break
			}
		}
		items = items[i:]
	}
	p := listPage{items: items}
	if size > 0 && len(items) > size {
		p.items, p.next = items[:size], key(items[size-1])
	}
	return p, nil
}

// afterName is the cursor of a list sorted by name.
func afterName[T any](name func(T) string) func(string) (func(T) bool, error) {
	return func(s string) (func(T) bool, error) {
		return func(it T) bool { return name(it) > s }, nil
	}
}

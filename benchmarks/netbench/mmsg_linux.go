package netbench

import (
	"context"
	"fmt"
	"net"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batch is the number of datagrams per sendmmsg or recvmmsg: the syscall,
// not the path, would otherwise be what UDP measures.
const batch = 64

// mmsgs returns batch message headers over bufs, one buffer each.
func mmsgs(bufs [][]byte) []unix.Mmsghdr {
	iovs := make([]unix.Iovec, len(bufs))
	msgs := make([]unix.Mmsghdr, len(bufs))
	for i, b := range bufs {
		iovs[i].Base = &b[0]
		iovs[i].SetLen(len(b))
		msgs[i].Hdr.Iov = &iovs[i]
		msgs[i].Hdr.SetIovlen(1)
	}
	return msgs
}

// mmsg calls sendmmsg or recvmmsg (trap) on fd without blocking.
func mmsg(trap, fd uintptr, msgs []unix.Mmsghdr) (int, unix.Errno) {
	n, _, errno := unix.Syscall6(trap, fd, uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), unix.MSG_DONTWAIT, 0, 0)
	return int(n), errno
}

// sendFor sends size-byte datagrams on the connected socket c until end,
// and returns how many it sent.
func sendFor(ctx context.Context, c *net.UDPConn, size int, end time.Time) (uint64, error) {
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, size)
	}
	msgs := mmsgs(bufs)
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var sent uint64
	for time.Now().Before(end) && ctx.Err() == nil {
		var errno unix.Errno
		err := rc.Write(func(fd uintptr) bool {
			var n int
			n, errno = mmsg(unix.SYS_SENDMMSG, fd, msgs)
			if errno == unix.EAGAIN {
				errno = 0
				return false
			}
			if n > 0 {
				sent += uint64(n)
			}
			return true
		})
		switch {
		case err != nil:
			return sent, err
		case errno == unix.ECONNREFUSED || errno == unix.ENOBUFS:
			// An ICMP port unreachable or a full queue: a lost batch,
			// not the end of the run.
		case errno != 0:
			return sent, fmt.Errorf("sendmmsg: %w", errno)
		}
	}
	return sent, nil
}

// recvCount receives datagrams on c until it is closed, calling add with
// each batch's packets and bytes.
func recvCount(c *net.UDPConn, add func(packets, bytes uint64)) error {
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	msgs := mmsgs(bufs)
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	for {
		var errno unix.Errno
		err := rc.Read(func(fd uintptr) bool {
			var n int
			n, errno = mmsg(unix.SYS_RECVMMSG, fd, msgs)
			if errno == unix.EAGAIN {
				errno = 0
				return false
			}
			var bytes uint64
			for i := 0; i < n; i++ {
				bytes += uint64(msgs[i].Len)
			}
			if n > 0 {
				add(uint64(n), bytes)
			}
			return true
		})
		if err != nil {
			return err
		}
		if errno != 0 && errno != unix.ECONNREFUSED {
			return fmt.Errorf("recvmmsg: %w", errno)
		}
	}
}

// echo-go: a Go plugin on dlhost's plugin-driven ABI. dlhost_init starts a
// goroutine that polls the queue and answers each request with "go:" and
// the request. A Go runtime can never leave a process (its threads never
// exit, golang/go#11100), so dlhost reloads it through isolation:
//
//	plugin := await reloadable('out/libecho_go.so')   // 'auto' isolates it
//
// Build: go build -buildmode=c-shared -o out/libecho_go.so ./echo-go
// (examples/Makefile does, when go is installed).
package main

/*
#cgo CFLAGS: -I${SRCDIR}/../../csrc/include
#cgo LDFLAGS: -Wl,--unresolved-symbols=ignore-all
#include <stdlib.h>
#include <string.h>
#define DLHOST_NO_ENTRY_PROTOTYPES // cgo exports take char *, not const char *
#include "dlhost.h"
*/
import "C"

import "unsafe"

// Answers "version" with this, for hot-reload demos (-ldflags -X main.version=2).
var version = "1"

func serve(q *C.dlhost_queue) {
	for {
		t := C.dlhost_task_poll(q) // NULL: the runtime is unloading
		if t == nil {
			return
		}
		var n C.size_t
		req := C.GoBytes(C.dlhost_task_request(t, &n), C.int(n))
		out := append([]byte("go:"), req...)
		if string(req) == "version" {
			out = []byte(version)
		}
		p := C.malloc(C.size_t(len(out))) // the host frees it
		C.memcpy(p, unsafe.Pointer(&out[0]), C.size_t(len(out)))
		C.dlhost_task_respond(t, 0, p, C.size_t(len(out)))
	}
}

//export dlhost_init
func dlhost_init(cfg *C.char, cfgLen C.size_t, q *C.dlhost_queue) C.int {
	go serve(q)
	return 0
}

func main() {}

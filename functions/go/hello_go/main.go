// A FunLess function in Go, with FunLess's ABI and no wrapper: the host's
// functions are imported from fl_imps with //go:wasmimport, and __invoke
// is exported with //go:wasmexport. {"name": "Ada"} gives
// {"payload": "Hello Ada!"}; without a name, {"payload": "Hello World!"}.
//
// Go builds a module that exports functions as a WASI reactor: it exports
// _initialize, which starts Go's runtime and which the worker calls once
// per instance before __invoke. Build it (in functions/go/hello_go) with
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o hello_go.wasm .
package main

import (
	"encoding/json"
	"unsafe"
)

//go:wasmimport fl_imps __get_input_data
func getInputData(ptr unsafe.Pointer)

//go:wasmimport fl_imps __insert_response
func insertResponse(ptr unsafe.Pointer, len uint32)

//go:wasmimport fl_imps __insert_error
func insertError(ptr unsafe.Pointer, len uint32)

//go:wasmimport fl_imps __console_log
func consoleLog(ptr unsafe.Pointer, len uint32)

// call hands text to one of the host's (pointer, length) functions.
func call(host func(unsafe.Pointer, uint32), text []byte) {
	if len(text) == 0 {
		host(nil, 0)
		return
	}
	host(unsafe.Pointer(&text[0]), uint32(len(text)))
}

func hello(input any) (any, error) {
	name := "World"
	if fields, ok := input.(map[string]any); ok {
		if given, ok := fields["name"].(string); ok {
			name = given
		}
	}
	call(consoleLog, []byte("greeting "+name))
	return map[string]any{"payload": "Hello " + name + "!"}, nil
}

//go:wasmexport __invoke
func invoke(length int32) int32 {
	input := make([]byte, max(length, 1))
	getInputData(unsafe.Pointer(&input[0]))
	var args any
	if err := json.Unmarshal(input[:length], &args); err != nil {
		call(insertError, []byte("input JSON not well-formatted"))
		return 1
	}
	result, err := hello(args)
	if err == nil {
		var response []byte
		if response, err = json.Marshal(result); err == nil {
			call(insertResponse, response)
			return 0
		}
	}
	call(insertError, []byte(err.Error()))
	return 1
}

// A reactor's main is not called; Go requires one.
func main() {}

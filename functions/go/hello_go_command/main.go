// A WASI command in Go: reads its arguments (JSON) on stdin and prints its
// result (JSON) on stdout. No FunLess wrapper.
//
// "Ada" or {"name": "Ada"} prints "Hello Ada!"; anything else
// "Hello World!".
//
// Build it (in functions/go/hello_go_command) with
//
//	GOOS=wasip1 GOARCH=wasm go build -o hello_go_command.wasm .
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
)

func main() {
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot read stdin:", err)
		os.Exit(1)
	}
	name := "World"
	var args any
	if json.Unmarshal(input, &args) == nil {
		switch args := args.(type) {
		case string:
			name = args
		case map[string]any:
			if given, ok := args["name"].(string); ok {
				name = given
			}
		}
	}
	greeting, _ := json.Marshal("Hello " + name + "!")
	fmt.Println(string(greeting))
}

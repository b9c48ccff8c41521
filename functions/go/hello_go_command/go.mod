module example.com/hello_go_command

go 1.24

module example.com/hello_go

go 1.24

module dlhost.example/echo-go

go 1.18

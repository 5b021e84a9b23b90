module github.com/pushmesh/pushmesh/emulator

go 1.26.0

require (
	github.com/golang-jwt/jwt/v4 v4.5.2
	github.com/sideshow/apns2 v0.25.0
	golang.org/x/net v0.62.0
)

require (
	github.com/stretchr/testify v1.10.0 // indirect
	golang.org/x/text v0.43.0 // indirect
)

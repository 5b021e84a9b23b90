module github.com/pushmesh/pushmesh/emulator

go 1.26

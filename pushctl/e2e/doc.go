// Package e2e holds the end-to-end tests of pushmesh: the three services and
// both gateway emulators in one process over loopback (see internal/mesh),
// driven through their gRPC APIs with the real apns2 and firebase clients on
// the gateway side.
package e2e

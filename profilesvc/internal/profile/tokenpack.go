package profile

import (
	"encoding/binary"
	"slices"
)

// A token's text is most of its details record, and token details are most
// of the pages a CRM import rewrites (a batch of updates and moves touches
// nearly every leaf of the profile_tokens bucket), so records store tokens
// packed whenever their text allows a lossless packing:
//
//	token = kind:1 payload
//	  kind 0 (text):    str
//	  kind 1 (hex):     chars:uvarint, lowercase hex digits two per byte,
//	                    high nibble first (APNs tokens, which validation
//	                    lowercases: 64 characters in 33 bytes)
//	  kind 2 (base64):  chars:uvarint colon:uvarint, then the characters
//	                    other than the colon, base64url digits (A–Z a–z 0–9
//	                    - _) six bits each, most significant bit first;
//	                    colon is 0 when there is none, else its index + 1
//	                    (FCM registration tokens, "<instance id>:APA91b…":
//	                    about 160 characters in about 122 bytes)
//
// Unused bits of the last byte are zero. Decoding gives back exactly the
// text that was encoded, whatever the text: anything else is stored as text.
const (
	tokenText   = 0
	tokenHex    = 1
	tokenBase64 = 2
)

const (
	hexDigits    = "0123456789abcdef"
	base64Digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
)

// packValue maps a character to its hex value (bits 0–3) and base64url
// value (bits 8–13), and says which it is (packHex, packBase64).
var packValue = func() [256]uint32 {
	var v [256]uint32
	for i := 0; i < len(base64Digits); i++ {
		v[base64Digits[i]] = uint32(i)<<8 | packBase64
	}
	for i := 0; i < len(hexDigits); i++ {
		v[hexDigits[i]] |= uint32(i) | packHex
	}
	return v
}()

const (
	packHex    = 1 << 16
	packBase64 = 1 << 17
)

// appendToken appends tok, packed when it can be, to dst.
func appendToken(dst []byte, tok string) []byte {
	if len(tok) == 0 {
		return append(dst, tokenText, 0)
	}
	kinds, colon := uint32(packHex|packBase64), -1
	for i := 0; i < len(tok); i++ {
		if tok[i] == ':' {
			if colon >= 0 {
				kinds = 0
				break
			}
			colon = i
			kinds &^= packHex
			continue
		}
		kinds &= packValue[tok[i]]
	}
	isHex, isBase64 := kinds&packHex != 0, kinds&packBase64 != 0
	switch {
	case isHex:
		dst = append(dst, tokenHex)
		dst = binary.AppendUvarint(dst, uint64(len(tok)))
		i := 0
		for ; i+1 < len(tok); i += 2 {
			dst = append(dst, byte(packValue[tok[i]])<<4|byte(packValue[tok[i+1]])&0xF)
		}
		if i < len(tok) {
			dst = append(dst, byte(packValue[tok[i]])<<4)
		}
		return dst
	case isBase64:
		chars := len(tok)
		if colon >= 0 {
			chars--
		}
		dst = append(dst, tokenBase64)
		dst = binary.AppendUvarint(dst, uint64(chars))
		dst = binary.AppendUvarint(dst, uint64(colon+1))
		// The characters without the colon, packed four to three bytes.
		var buf [256]byte
		text := append(buf[:0], tok[:max(colon, 0)]...)
		text = append(text, tok[colon+1:]...)
		dst = slices.Grow(dst, (6*len(text)+7)/8)
		i := 0
		for ; i+4 <= len(text); i += 4 {
			v := packValue[text[i]]>>8&63<<18 | packValue[text[i+1]]>>8&63<<12 |
				packValue[text[i+2]]>>8&63<<6 | packValue[text[i+3]]>>8&63
			dst = append(dst, byte(v>>16), byte(v>>8), byte(v))
		}
		var acc uint32
		bits := 0
		for ; i < len(text); i++ {
			acc = acc<<6 | packValue[text[i]]>>8&63
			bits += 6
			if bits >= 8 {
				bits -= 8
				dst = append(dst, byte(acc>>bits))
			}
		}
		if bits > 0 {
			dst = append(dst, byte(acc<<(8-bits)))
		}
		return dst
	default:
		dst = append(dst, tokenText)
		return appendStr(dst, tok)
	}
}

// token reads a token written by appendToken and returns its text: when it
// was packed, appended to scratch; when it was stored as text, borrowing the
// record's memory.
func (r *reader) token(scratch []byte) (text []byte, packed bool) {
	switch r.byte() {
	case tokenText:
		return r.bytes(), false
	case tokenHex:
		chars := r.uvarint()
		if chars > 2*uint64(len(r.b)) {
			r.fail()
			return nil, false
		}
		n := int(chars)
		packed := r.take((n + 1) / 2)
		if r.err != nil {
			return nil, false
		}
		for _, b := range packed[:n/2] {
			scratch = append(scratch, hexDigits[b>>4], hexDigits[b&0xF])
		}
		if n%2 == 1 {
			scratch = append(scratch, hexDigits[packed[n/2]>>4])
		}
		return scratch, true
	case tokenBase64:
		chars, colon := r.uvarint(), r.uvarint()
		if chars > 8*uint64(len(r.b))/6 || colon > chars+1 {
			r.fail()
			return nil, false
		}
		n, at := int(chars), int(colon)-1
		packed := r.take((6*n + 7) / 8)
		if r.err != nil {
			return nil, false
		}
		start := len(scratch)
		i, next := 0, 0
		// Three bytes make four characters.
		for ; i+4 <= n; i, next = i+4, next+3 {
			v := uint32(packed[next])<<16 | uint32(packed[next+1])<<8 | uint32(packed[next+2])
			scratch = append(scratch, base64Digits[v>>18], base64Digits[v>>12&63], base64Digits[v>>6&63], base64Digits[v&63])
		}
		var acc uint32
		bits := 0
		for ; i < n; i++ {
			if bits < 6 {
				acc = acc<<8 | uint32(packed[next])
				next++
				bits += 8
			}
			bits -= 6
			scratch = append(scratch, base64Digits[acc>>bits&63])
		}
		if at >= 0 {
			scratch = append(scratch, 0)
			copy(scratch[start+at+1:], scratch[start+at:])
			scratch[start+at] = ':'
		}
		return scratch, true
	default:
		r.fail()
		return nil, false
	}
}

// tokenLen reads past a token written by appendToken and returns the length
// of its text, without unpacking it.
func (r *reader) tokenLen() int {
	switch r.byte() {
	case tokenText:
		return len(r.bytes())
	case tokenHex:
		chars := r.uvarint()
		if chars > 2*uint64(len(r.b)) {
			r.fail()
			return 0
		}
		r.take((int(chars) + 1) / 2)
		return int(chars)
	case tokenBase64:
		chars, colon := r.uvarint(), r.uvarint()
		if chars > 8*uint64(len(r.b))/6 || colon > chars+1 {
			r.fail()
			return 0
		}
		r.take((6*int(chars) + 7) / 8)
		if colon > 0 {
			return int(chars) + 1
		}
		return int(chars)
	default:
		r.fail()
		return 0
	}
}

// take returns the next n bytes without copying.
func (r *reader) take(n int) []byte {
	if n > len(r.b) {
		r.fail()
		return nil
	}
	b := r.b[:n]
	r.b = r.b[n:]
	return b
}

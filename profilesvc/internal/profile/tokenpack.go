package profile

import "encoding/binary"

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

// packValue maps a character to its hex value (bits 0–3, 0xFF when not a
// lowercase hex digit) and base64url value (bits 8–13, 0xFF00 when none).
var packValue = func() [256]uint16 {
	var v [256]uint16
	for c := range v {
		v[c] = 0xFFFF
	}
	for i := 0; i < len(base64Digits); i++ {
		v[base64Digits[i]] = uint16(i)<<8 | 0xFF
	}
	for i := 0; i < len(hexDigits); i++ {
		v[hexDigits[i]] = v[hexDigits[i]]&0xFF00 | uint16(i)
	}
	return v
}()

// appendToken appends tok, packed when it can be, to dst.
func appendToken(dst []byte, tok string) []byte {
	if len(tok) == 0 {
		return append(dst, tokenText, 0)
	}
	isHex, isBase64, colon := true, true, -1
	for i := 0; i < len(tok); i++ {
		v := packValue[tok[i]]
		isHex = isHex && v&0xFF != 0xFF
		if v&0xFF00 == 0xFF00 {
			if tok[i] != ':' || colon >= 0 {
				isBase64 = false
			} else {
				colon = i
			}
		}
	}
	switch {
	case isHex:
		dst = append(dst, tokenHex)
		dst = binary.AppendUvarint(dst, uint64(len(tok)))
		for i := 0; i < len(tok); i += 2 {
			b := byte(packValue[tok[i]]) << 4
			if i+1 < len(tok) {
				b |= byte(packValue[tok[i+1]])
			}
			dst = append(dst, b)
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
		var acc uint32
		bits := 0
		for i := 0; i < len(tok); i++ {
			if i == colon {
				continue
			}
			acc = acc<<6 | uint32(packValue[tok[i]]>>8)
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
		for i := 0; i < n; i++ {
			b := packed[i/2]
			if i%2 == 0 {
				b >>= 4
			}
			scratch = append(scratch, hexDigits[b&0xF])
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
		var acc uint32
		bits, next := 0, 0
		for i := 0; i < n; i++ {
			if i == at {
				scratch = append(scratch, ':')
			}
			if bits < 6 {
				acc = acc<<8 | uint32(packed[next])
				next++
				bits += 8
			}
			bits -= 6
			scratch = append(scratch, base64Digits[acc>>bits&63])
		}
		if at == n {
			scratch = append(scratch, ':')
		}
		return scratch, true
	default:
		r.fail()
		return nil, false
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

package audience

import (
	"fmt"
	"reflect"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
)

// attrMap is the `attributes` variable: a CEL map read straight from the
// stored record. Looking a key up decodes that one value; only operations
// that need the whole map (iteration, size, equality, conversion) decode
// it all. Most conditions read a few keys of each profile, so this saves
// building a Go map per profile scanned.
type attrMap struct {
	act  *activation
	full traits.Mapper
}

var _ traits.Mapper = (*attrMap)(nil)

func (m *attrMap) whole() traits.Mapper {
	if m.full == nil {
		m.full = types.NewStringInterfaceMap(types.DefaultTypeAdapter, m.act.attributes())
	}
	return m.full
}

// Find implements traits.Mapper.
func (m *attrMap) Find(key ref.Val) (ref.Val, bool) {
	k, ok := key.(types.String)
	if !ok {
		return m.whole().Find(key)
	}
	v, found, err := m.act.view.LookupAttribute(string(k))
	if err != nil {
		m.act.fail(err)
		return types.NewErr("%v", err), true
	}
	if !found {
		return nil, false
	}
	return types.DefaultTypeAdapter.NativeToValue(v), true
}

// Get implements traits.Indexer.
func (m *attrMap) Get(key ref.Val) ref.Val {
	v, found := m.Find(key)
	if !found {
		return types.ValOrErr(v, "no such key: %v", key)
	}
	return v
}

// Contains implements traits.Container.
func (m *attrMap) Contains(key ref.Val) ref.Val {
	_, found := m.Find(key)
	return types.Bool(found)
}

// Size implements traits.Sizer.
func (m *attrMap) Size() ref.Val {
	n, err := m.act.view.AttributeCount()
	if err != nil {
		m.act.fail(err)
		return types.NewErr("%v", err)
	}
	return types.Int(n)
}

// IsZeroValue reports whether the map is empty.
func (m *attrMap) IsZeroValue() bool {
	n, err := m.act.view.AttributeCount()
	return err == nil && n == 0
}

// Iterator implements traits.Iterable.
func (m *attrMap) Iterator() traits.Iterator { return m.whole().Iterator() }

// ConvertToNative implements ref.Val.
func (m *attrMap) ConvertToNative(typeDesc reflect.Type) (any, error) {
	return m.whole().ConvertToNative(typeDesc)
}

// ConvertToType implements ref.Val.
func (m *attrMap) ConvertToType(typeVal ref.Type) ref.Val {
	switch typeVal {
	case types.MapType:
		return m
	case types.TypeType:
		return types.MapType
	}
	return types.NewErr("type conversion error from map to '%s'", typeVal)
}

// Equal implements ref.Val.
func (m *attrMap) Equal(other ref.Val) ref.Val { return m.whole().Equal(other) }

// Type implements ref.Val.
func (m *attrMap) Type() ref.Type { return types.MapType }

// Value implements ref.Val.
func (m *attrMap) Value() any { return m.act.attributes() }

func (m *attrMap) String() string { return fmt.Sprint(m.act.attributes()) }

// Package health evaluates the Argo CD health script shipped in
// config/argocd against an object, the way Argo CD runs it: the object as a
// Lua table named obj, the script returning a table with status and message.
package health

import (
	"fmt"
	"sort"

	lua "github.com/yuin/gopher-lua"
)

// Argo CD's health statuses.
const (
	Healthy     = "Healthy"
	Progressing = "Progressing"
	Degraded    = "Degraded"
	Suspended   = "Suspended"
)

// Result is what a health script returns.
type Result struct {
	Status  string
	Message string
}

// Evaluate runs script with obj (an object as JSON decodes it) as the global obj.
func Evaluate(script string, obj map[string]any) (Result, error) {
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	for _, open := range []struct {
		name string
		fn   lua.LGFunction
	}{{lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}, {lua.StringLibName, lua.OpenString}, {lua.MathLibName, lua.OpenMath}} {
		L.Push(L.NewFunction(open.fn))
		L.Push(lua.LString(open.name))
		L.Call(1, 0)
	}
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		return Result{}, fmt.Errorf("running the health script: %w", err)
	}
	ret, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		return Result{}, fmt.Errorf("the health script returned %s, not a table", L.Get(-1).Type())
	}
	return Result{Status: lua.LVAsString(ret.RawGetString("status")), Message: lua.LVAsString(ret.RawGetString("message"))}, nil
}

// toLua converts a JSON value to Lua as Argo CD does: objects to tables with
// string keys, arrays to sequences, numbers to numbers.
func toLua(L *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case []any:
		t := L.NewTable()
		for _, item := range v {
			t.Append(toLua(L, item))
		}
		return t
	case map[string]any:
		t := L.NewTable()
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			t.RawSetString(k, toLua(L, v[k]))
		}
		return t
	}
	return lua.LString(fmt.Sprint(v))
}

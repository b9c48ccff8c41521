defmodule Worker.FunctionTest do
  use ExUnit.Case, async: true
  import Bitwise

  alias Worker.Function

  @core_struct %{
    __struct__: Data.FunctionStruct,
    name: "hello",
    module: "examples",
    hash: <<1, 2, 3>>,
    code: "wasm",
    metadata: %{__struct__: Data.FunctionMetadata, tag: "default", capacity: 67_108_864}
  }

  test "reads the Core's struct without its modules loaded" do
    assert {:ok, function} = Function.parse(@core_struct)

    assert function == %Function{
             module: "examples",
             name: "hello",
             hash: <<1, 2, 3>>,
             code: "wasm",
             capacity: 67_108_864
           }

    assert Function.key(function) == {"examples", "hello", <<1, 2, 3>>}
    assert Function.id(function) == {"examples", "hello"}
    assert Function.id(Function.key(function)) == {"examples", "hello"}
  end

  test "plain maps, no code, no metadata" do
    assert {:ok, %Function{code: nil, capacity: nil}} =
             Function.parse(%{name: "f", module: "", hash: "h"})
  end

  test "capacity is only a positive integer; the Core's -1 means none" do
    for capacity <- [-1, 0, 1.5, "64", nil] do
      fun = %{@core_struct | metadata: %{capacity: capacity}}
      assert {:ok, %Function{capacity: nil}} = Function.parse(fun), inspect(capacity)
    end
  end

  test "capacity is in bytes: under one 64 KiB page, no module can run, and it says so" do
    for capacity <- [1, 64, 128, 65_535] do
      fun = %{@core_struct | metadata: %{capacity: capacity}}
      assert {:error, {:insufficient_capacity, reason}} = Function.parse(fun)
      assert reason =~ "capacity #{capacity} is in bytes"
      assert {:error, {:insufficient_capacity, _}} = Function.parse_with_code(fun)
    end

    for capacity <- [65_536, 1 <<< 40] do
      fun = %{@core_struct | metadata: %{capacity: capacity}}
      assert {:ok, %Function{capacity: ^capacity}} = Function.parse(fun)
    end

    # what the runtime can take (a u64), however large the Core's number
    for capacity <- [1 <<< 64, 1 <<< 200] do
      fun = %{@core_struct | metadata: %{capacity: capacity}}
      assert {:ok, %Function{capacity: 0xFFFF_FFFF_FFFF_FFFF}} = Function.parse(fun)
    end
  end

  test "refuses what is not text, empty or too long, with the field named" do
    bad = [
      {%{@core_struct | name: ""}, "name"},
      {%{@core_struct | name: 7}, "name"},
      {%{@core_struct | name: <<0xFF>>}, "name"},
      {%{@core_struct | name: String.duplicate("a", 1025)}, "name"},
      {%{@core_struct | module: :atom}, "module"},
      {%{@core_struct | hash: ""}, "hash"},
      {%{@core_struct | hash: :binary.copy("h", 257)}, "hash"},
      {%{@core_struct | code: ~c"list"}, "code"},
      {%{name: "f"}, "expected a map"},
      {"a string", "expected a map"}
    ]

    for {fun, field} <- bad do
      assert {:error, {:bad_request, reason}} = Function.parse(fun)
      assert reason =~ field, "#{inspect(fun, limit: 5)}: #{reason}"
    end

    assert {:ok, _} = Function.parse(%{@core_struct | name: String.duplicate("a", 1024)})
  end

  test "parse_with_code/1 requires the code" do
    assert {:ok, %Function{code: "wasm"}} = Function.parse_with_code(@core_struct)

    assert Function.parse_with_code(%{@core_struct | code: nil}) ==
             {:error, {:bad_request, "code is missing"}}

    assert {:error, {:bad_request, "name" <> _}} =
             Function.parse_with_code(%{@core_struct | name: ""})
  end
end

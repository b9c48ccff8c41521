defmodule Worker.RequestTest do
  use ExUnit.Case, async: true

  alias Worker.{Function, Request}

  @fun %{name: "f", module: "m", hash: "h", code: "wasm"}
  @without_code %{@fun | code: nil}

  test "every request of the Core's protocol becomes its job" do
    assert Request.parse(:get_info) == {:ok, :get_info}

    assert {:ok, {:invoke, %Function{name: "f", code: nil}, {:json, ~s({"a":1})}}} =
             Request.parse({:invoke, @without_code, %{"a" => 1}})

    # with code, the arguments are empty
    assert {:ok, {:invoke, %Function{code: "wasm"}, {:json, "{}"}}} =
             Request.parse({:invoke, @fun})

    assert {:ok, {:store, %Function{code: "wasm"}}} = Request.parse({:store_function, @fun})

    assert {:ok, {:update, "old", %Function{hash: "h"}}} =
             Request.parse({:update_function, "old", @fun})

    assert Request.parse({:delete_function, "f", "m", "h"}) == {:ok, {:delete, {"m", "f", "h"}}}
    assert Request.parse({:set_long_name, "n"}) == {:ok, {:set_node_info, "n", nil}}
    assert Request.parse({:set_tag, "t"}) == {:ok, {:set_node_info, nil, "t"}}
  end

  test "known requests with bad content are refused, with a reason" do
    assert {:error, {:bad_request, "code is missing"}} = Request.parse({:invoke, @without_code})

    assert {:error, {:bad_request, "code is missing"}} =
             Request.parse({:store_function, @without_code})

    assert {:error, {:bad_request, "prev_hash" <> _}} =
             Request.parse({:update_function, :old, @fun})

    assert {:error, {:bad_request, _}} = Request.parse({:delete_function, "f", :m, "h"})

    assert {:error, {:bad_request, "name" <> _}} =
             Request.parse({:invoke, %{@fun | name: ""}, %{}})

    # arguments without a JSON form, found at the door
    assert {:error, {:invalid_args, _}} =
             Request.parse({:invoke, @without_code, %{"p" => self()}})
  end

  test "anything else is unknown" do
    for other <- [:get_info!, {:invoke}, {:invoke, 1, 2, 3}, {:store_function, @fun, 1}, "x", %{}] do
      assert Request.parse(other) == :unknown, inspect(other)
    end
  end
end

defmodule Worker.JSONTest do
  use ExUnit.Case, async: true

  test "round trips values through JSON text" do
    value = %{"a" => [1, -2.5, true, false, nil, "é\n\"x\""], "b" => %{"c" => []}}
    assert {:ok, text} = Worker.JSON.encode(value)
    assert Worker.JSON.decode(text) == {:ok, value}
  end

  test "encodes atoms and integer keys as strings" do
    assert Worker.JSON.encode(%{1 => :two}) == {:ok, ~s({"1":"two"})}
  end

  test "decoding keeps the last of duplicate keys" do
    assert Worker.JSON.decode(~s({"k":1,"k":2})) == {:ok, %{"k" => 2}}
  end

  test "reports invalid text and unencodable terms" do
    assert {:error, reason} = Worker.JSON.decode("{nope")
    assert reason =~ "line 1"
    assert {:error, _} = Worker.JSON.encode({:tuple})
    assert {:error, _} = Worker.JSON.encode(<<0xFF>>)
  end
end

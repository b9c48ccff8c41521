defmodule Worker.Bench.Report do
  @moduledoc """
  What the parts share to print: the progress lines (`==> ...`) and the
  number formats of their markdown tables. Each part writes its own
  sections; `mix worker.bench` joins them into one table.
  """

  @doc "A progress line."
  def info(text), do: Mix.shell().info("==> " <> text)

  @doc "A figure: floats with two decimals."
  def fmt(x) when is_float(x), do: :erlang.float_to_binary(x, decimals: 2)
  def fmt(x), do: to_string(x)

  @doc "µs, or n/a where the figure could not be measured."
  def fmt_us(nil), do: "n/a"
  def fmt_us(us), do: "#{fmt(us)} µs"

  @doc "Whether a target is met."
  def met(true), do: "met"
  def met(false), do: "not met"
end

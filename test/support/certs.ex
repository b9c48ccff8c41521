defmodule Worker.Test.Certs do
  @moduledoc """
  Certificates for tests, made by `openssl` as a private PKI has them: a
  CA, and certificates it signs for 127.0.0.1.
  """

  @doc """
  Writes a CA (`ca.crt`, `ca.key`) in `dir`, and for each name a key and a
  certificate signed by it for the address 127.0.0.1 (`NAME.key`,
  `NAME.crt`). Returns `%{ca: path, NAME => {cert, key}}`.

  The address is a DNS name in the certificates too, since OTP checks a
  host given as text (a node name's host) against DNS names only; with
  `ip_only: true` it is an IP address alone, as in the certificate of
  Kubernetes' API server, which clients reach by its service's address.
  """
  def make!(dir, names, opts \\ []) do
    File.mkdir_p!(dir)
    [ca_key, ca] = Enum.map(~w(ca.key ca.crt), &Path.join(dir, &1))
    ext = Path.join(dir, "leaf.ext")
    san = if opts[:ip_only], do: "IP:127.0.0.1", else: "IP:127.0.0.1,DNS:127.0.0.1"
    File.write!(ext, "subjectAltName=#{san}\nbasicConstraints=CA:FALSE\n")

    openssl!(
      ~w(req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout) ++
        [ca_key, "-out", ca]
    )

    leaves =
      for name <- names, into: %{} do
        [key, csr, cert] = Enum.map(~w(.key .csr .crt), &Path.join(dir, name <> &1))
        openssl!(~w(req -newkey rsa:2048 -nodes -subj /CN=#{name} -keyout) ++ [key, "-out", csr])

        openssl!(
          ~w(x509 -req -days 1 -CAcreateserial -in) ++
            [csr, "-CA", ca, "-CAkey", ca_key, "-out", cert, "-extfile", ext]
        )

        {name, {cert, key}}
      end

    Map.put(leaves, :ca, ca)
  end

  defp openssl!(args) do
    {output, status} = System.cmd("openssl", args, stderr_to_stdout: true)
    if status != 0, do: raise("openssl #{Enum.join(args, " ")}: #{output}")
  end
end

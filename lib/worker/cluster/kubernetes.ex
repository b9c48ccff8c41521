defmodule Worker.Cluster.Kubernetes do
  @moduledoc """
  The Core's pods, from the Kubernetes API, as FunLess's worker finds them
  with libcluster's Kubernetes strategy in `:pods` mode: the pods that
  match a label selector (FunLess's `app=fl-core`) in a namespace, listed
  with the pod's service account, each one's `status.podIP` the host of a
  node `basename@IP` (FunLess's basename is `core`).

  The API is reached at the address Kubernetes gives every pod
  (`KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT`), over TLS checked
  against the service account's CA, with its token. The service account
  needs `list` on `pods` in that namespace (FunLess's `fl-svc-account`
  has it).
  """

  @default_account "/var/run/secrets/kubernetes.io/serviceaccount"

  @typedoc """
  * `:api` - the API's base URL (`https://HOST:PORT`);
  * `:selector` - the label selector of the Core's pods;
  * `:namespace` - their namespace; nil: the pod's own (the service
    account's `namespace` file);
  * `:account_dir` - where the service account's `token`, `ca.crt` and
    `namespace` are.
  """
  @type options :: %{
          api: String.t(),
          selector: String.t(),
          namespace: String.t() | nil,
          account_dir: Path.t()
        }

  @doc "Where Kubernetes mounts a pod's service account."
  def default_account_dir, do: @default_account

  @doc "The addresses of the pods the selector matches, or why not."
  @spec lookup(options()) :: {:ok, [:inet.ip_address()]} | {:error, String.t()}
  def lookup(opts) do
    with {:ok, token} <- read(opts.account_dir, "token"),
         {:ok, namespace} <- namespace(opts),
         {:ok, body} <- get(pods_url(opts, namespace), token, opts) do
      pod_ips(body)
    end
  end

  defp namespace(%{namespace: namespace}) when is_binary(namespace), do: {:ok, namespace}
  defp namespace(opts), do: read(opts.account_dir, "namespace")

  defp read(dir, file) do
    case File.read(Path.join(dir, file)) do
      {:ok, text} -> {:ok, String.trim(text)}
      {:error, reason} -> {:error, "cannot read #{Path.join(dir, file)}: #{reason}"}
    end
  end

  defp pods_url(opts, namespace) do
    query = URI.encode_query(%{"labelSelector" => opts.selector}, :rfc3986)

    "#{opts.api}/api/v1/namespaces/#{URI.encode(namespace, &URI.char_unreserved?/1)}/pods?#{query}"
  end

  defp get(url, token, opts) do
    headers = [{~c"authorization", String.to_charlist("Bearer " <> token)}]

    # the CA read here, each time, rather than named as a file: ssl caches
    # files by name, and a service account's CA is rotated in place
    with {:ok, cacerts} <- cacerts(opts.account_dir) do
      http = [
        timeout: 15_000,
        connect_timeout: 5_000,
        autoredirect: false,
        ssl: [
          verify: :verify_peer,
          cacerts: cacerts,
          customize_hostname_check: [match_fun: &match_host/2]
        ]
      ]

      request(url, headers, http)
    end
  end

  defp cacerts(dir) do
    with {:ok, pem} <- read(dir, "ca.crt") do
      case for {:Certificate, der, _} <- :public_key.pem_decode(pem), do: der do
        [] -> {:error, "no certificate in #{Path.join(dir, "ca.crt")}"}
        ders -> {:ok, ders}
      end
    end
  end

  defp request(url, headers, http) do
    case :httpc.request(:get, {String.to_charlist(url), headers}, http, body_format: :binary) do
      {:ok, {{_, 200, _}, _headers, body}} -> {:ok, body}
      {:ok, {{_, status, _}, _headers, body}} -> {:error, "status #{status}: #{excerpt(body)}"}
      {:error, reason} -> {:error, inspect(reason)}
    end
  end

  # The API is usually reached by address (KUBERNETES_SERVICE_HOST), which
  # its certificate names as an IP address: OTP compares the text of the
  # address with DNS names only, so addresses are matched here.
  defp match_host({:dns_id, host} = reference, {:iPAddress, presented} = name) do
    case :inet.parse_strict_address(host) do
      {:ok, ip} -> IO.iodata_to_binary(presented) == ip_bytes(ip)
      {:error, _} -> https_match(reference, name)
    end
  end

  defp match_host(reference, name), do: https_match(reference, name)

  defp https_match(reference, name),
    do: :public_key.pkix_verify_hostname_match_fun(:https).(reference, name)

  defp ip_bytes({a, b, c, d}), do: <<a, b, c, d>>

  defp ip_bytes(words) when tuple_size(words) == 8,
    do: for(w <- Tuple.to_list(words), into: <<>>, do: <<w::16>>)

  defp excerpt(body), do: inspect(binary_part(body, 0, min(byte_size(body), 200)))

  # items[].status.podIP of a PodList; pods without an address yet are left out
  defp pod_ips(body) do
    case Worker.JSON.decode(body) do
      {:ok, %{"items" => items}} when is_list(items) ->
        ips =
          for %{"status" => %{"podIP" => ip}} when is_binary(ip) <- items,
              {:ok, address} <- [:inet.parse_strict_address(String.to_charlist(ip))],
              uniq: true,
              do: address

        {:ok, ips}

      _ ->
        {:error, "not a PodList: #{excerpt(body)}"}
    end
  end
end

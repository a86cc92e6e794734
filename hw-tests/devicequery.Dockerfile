# deviceQuery image for hw-tests/jetson-gpu.sh. Build ON THE JETSON (arm64),
# with a base matching its JetPack (r36.x: l4t-jetpack:r36.4.0; r35.x:
# l4t-jetpack:r35.4.1), then save it as a tar:
#   docker build -f hw-tests/devicequery.Dockerfile \
#     --build-arg BASE=nvcr.io/nvidia/l4t-jetpack:r36.4.0 -t devicequery .
#   docker save devicequery -o devicequery.tar
# (podman build / podman save work the same; CUDA samples tag v12.5 builds
# with CUDA 12.x, use v11.4 for JetPack 5.)
ARG BASE=nvcr.io/nvidia/l4t-jetpack:r36.4.0
FROM ${BASE} AS build
ARG SAMPLES=v12.5
RUN apt-get update && apt-get install -y --no-install-recommends git make g++ \
 && git clone --depth 1 --branch ${SAMPLES} https://github.com/NVIDIA/cuda-samples /src \
 && cd /src/Samples/1_Utilities/deviceQuery \
 && make SMS="53 72 87" HOST_COMPILER=g++ \
 && cp deviceQuery /usr/local/bin/deviceQuery
FROM ${BASE}
COPY --from=build /usr/local/bin/deviceQuery /usr/local/bin/deviceQuery
# Prints "Result = PASS" when the GPU is reachable, then stays up so the
# agent's probation sees a running container.
CMD ["/bin/sh", "-c", "/usr/local/bin/deviceQuery; exec sleep 2147483647"]

// kstatus prints what the kstatus library (sigs.k8s.io/cli-utils/pkg/kstatus/status), the
// one Flux and the cli-utils appliers use, computes for Kubernetes objects. It reads JSON or
// YAML documents on stdin (a List's items count one by one) and writes one JSON line per
// object: {"kind", "name", "status", "message"}. The operator's tests use it to check that
// "Current" means applied and "Failed" means a human is needed.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	decoder := yaml.NewYAMLOrJSONDecoder(in, 4096)
	encoder := json.NewEncoder(out)
	for {
		var raw json.RawMessage
		if err := decoder.Decode(&raw); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("decode: %w", err)
		}
		if len(raw) == 0 || string(raw) == "null" {
			continue
		}
		// The unstructured JSON scheme keeps integers as int64, as kstatus expects.
		decoded, _, err := unstructured.UnstructuredJSONScheme.Decode(raw, nil, nil)
		if err != nil {
			return fmt.Errorf("decode: %w", err)
		}
		var objects []unstructured.Unstructured
		switch obj := decoded.(type) {
		case *unstructured.UnstructuredList:
			objects = obj.Items
		case *unstructured.Unstructured:
			objects = []unstructured.Unstructured{*obj}
		default:
			return fmt.Errorf("decode: unexpected %T", decoded)
		}
		for i := range objects {
			u := &objects[i]
			computed, err := status.Compute(u)
			if err != nil {
				return fmt.Errorf("%s %s: %w", u.GetKind(), u.GetName(), err)
			}
			r := result{Kind: u.GetKind(), Name: u.GetName(), Status: computed.Status.String(), Message: computed.Message}
			if err := encoder.Encode(r); err != nil {
				return err
			}
		}
	}
}
